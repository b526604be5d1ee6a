################################################################################
# IAM. Every policy is built here as plain data and rendered with jsonencode (no
# aws_iam_policy_document data sources), so it is known at plan time and the tests
# in tests/ can inspect the exact statements.
#
# Rule: no secretsmanager action is ever granted on Resource "*". Secrets are
# granted by ARN (secret_arns) and/or by tag on this account's and region's secret
# ARNs (secret_tag_key/secret_tag_value). secretsmanager:ListSecrets (tag fan-out)
# has no resource-level permissions, so IAM only grants it on "*": it is not granted
# here (see var.fanout_schedule and README.md).
################################################################################

locals {
  # A bus given by name is this account's and region's; an ARN is taken as is.
  event_bus_arn = var.event_bus_name == null ? null : (
    startswith(var.event_bus_name, "arn:") ? var.event_bus_name :
    "arn:${local.partition}:events:${local.region}:${local.account_id}:event-bus/${var.event_bus_name}"
  )

  secret_actions = [
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
  ]

  # Every statement has the same shape; a null Condition is dropped when rendered.
  task_statements = concat(
    length(var.secret_arns) > 0 ? [{
      Sid       = "ManagedSecretsByArn"
      Effect    = "Allow"
      Action    = local.secret_actions
      Resource  = var.secret_arns
      Condition = null
    }] : [],
    local.secret_tag_used ? [{
      Sid      = "ManagedSecretsByTag"
      Effect   = "Allow"
      Action   = local.secret_actions
      Resource = ["arn:${local.partition}:secretsmanager:${local.region}:${local.account_id}:secret:*"]
      Condition = {
        StringEquals = { "aws:ResourceTag/${var.secret_tag_key}" = [var.secret_tag_value] }
      }
    }] : [],
    length(var.secrets_kms_key_arns) > 0 ? [{
      Sid       = "ManagedSecretsKms"
      Effect    = "Allow"
      Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
      Resource  = var.secrets_kms_key_arns
      Condition = { StringEquals = { "kms:ViaService" = ["secretsmanager.${local.region}.${local.dns_suffix}"] } }
    }] : [],
    [
      {
        # Leases and step records. The worker never creates or describes the table.
        Sid       = "LeaseTable"
        Effect    = "Allow"
        Action    = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
        Resource  = [aws_dynamodb_table.this.arn]
        Condition = null
      },
      {
        # A rotation asks RDS for the readers, replicas and Blue/Green deployments of its
        # database (ROTATOR_RDS_DISCOVERY). Read only, this account and region's instances and
        # clusters (RDS evaluates these describe calls against them).
        Sid    = "DatabaseReaders"
        Effect = "Allow"
        Action = ["rds:DescribeDBInstances", "rds:DescribeDBClusters", "rds:DescribeBlueGreenDeployments"]
        Resource = [
          "arn:${local.partition}:rds:${local.region}:${local.account_id}:db:*",
          "arn:${local.partition}:rds:${local.region}:${local.account_id}:cluster:*",
          "arn:${local.partition}:rds:${local.region}:${local.account_id}:deployment:*",
        ]
        Condition = null
      },
      {
        # SendMessage: a fan-out re-enqueues one request per secret, and a rotation that waits
        # sends its request again.
        Sid    = "RequestQueue"
        Effect = "Allow"
        Action = [
          "sqs:ReceiveMessage",
          "sqs:DeleteMessage",
          "sqs:ChangeMessageVisibility",
          "sqs:GetQueueAttributes",
          "sqs:SendMessage",
        ]
        Resource  = [aws_sqs_queue.this.arn]
        Condition = null
      },
      {
        Sid       = "DeadLetterQueue"
        Effect    = "Allow"
        Action    = ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
        Resource  = [aws_sqs_queue.dlq.arn]
        Condition = null
      },
    ],
    var.event_bus_name != null ? [{
      # Result events (RotationSucceeded, RotationFailed) on the operator's bus.
      Sid       = "ResultEvents"
      Effect    = "Allow"
      Action    = ["events:PutEvents"]
      Resource  = [local.event_bus_arn]
      Condition = null
    }] : [],
    var.kms_key_arn != null ? [{
      Sid       = "ModuleResourcesKms"
      Effect    = "Allow"
      Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
      Resource  = [var.kms_key_arn]
      Condition = { StringEquals = { "kms:ViaService" = ["sqs.${local.region}.${local.dns_suffix}", "dynamodb.${local.region}.${local.dns_suffix}"] } }
    }] : [],
  )

  task_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [for s in local.task_statements : { for k, v in s : k => v if v != null }]
  })

  # ECR pulls are limited to the image's repository when the image is in ECR; an image from a
  # public registry needs no ECR permission at all.
  ecr_image      = regex("^(?:([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com(?:\\.cn)?/([^:@]+))?", var.image)
  ecr_repository = local.ecr_image[0] == null ? null : "arn:${local.partition}:ecr:${local.ecr_image[1]}:${local.ecr_image[0]}:repository/${local.ecr_image[2]}"

  execution_statements = concat(
    local.ecr_repository == null ? [] : [
      {
        # GetAuthorizationToken has no resource-level permissions (not a secretsmanager action).
        Sid      = "EcrAuth"
        Effect   = "Allow"
        Action   = ["ecr:GetAuthorizationToken"]
        Resource = ["*"]
      },
      {
        Sid      = "EcrPull"
        Effect   = "Allow"
        Action   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
        Resource = [local.ecr_repository]
      },
    ],
    [{
      Sid      = "Logs"
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
      Resource = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
    }],
  )

  execution_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = local.execution_statements
  })

  # EventBridge Scheduler delivers to the queue, and to the DLQ when delivery keeps failing.
  scheduler_statements = concat(
    [{
      Sid       = "SendRequests"
      Effect    = "Allow"
      Action    = ["sqs:SendMessage"]
      Resource  = [aws_sqs_queue.this.arn, aws_sqs_queue.dlq.arn]
      Condition = null
    }],
    var.kms_key_arn != null ? [{
      Sid       = "QueueKms"
      Effect    = "Allow"
      Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
      Resource  = [var.kms_key_arn]
      Condition = { StringEquals = { "kms:ViaService" = ["sqs.${local.region}.${local.dns_suffix}"] } }
    }] : [],
  )

  scheduler_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [for s in local.scheduler_statements : { for k, v in s : k => v if v != null }]
  })

  # The task role carries ECS's documented confused-deputy conditions. The execution role is
  # assumed by the ECS/Fargate agent, for which those keys are not documented: a condition on a
  # key that is absent fails closed, and no task could start, so it trusts the service alone.
  ecs_execution_trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })

  ecs_tasks_trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*" }
      }
    }]
  })

  scheduler_trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "scheduler.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        # Scheduler's confused-deputy guidance: the source ARN is the schedule GROUP's (a
        # schedule's ARN or a name prefix here would make every assume-role call fail).
        ArnEquals = { "aws:SourceArn" = "arn:${local.partition}:scheduler:${local.region}:${local.account_id}:schedule-group/${local.schedule_group}" }
      }
    }]
  })
}

# The worker.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  description        = "rds-rotator worker: rotates the managed secrets"
  assume_role_policy = local.ecs_tasks_trust
  tags               = var.tags

  lifecycle {
    precondition {
      condition     = length(var.secret_arns) > 0 || local.secret_tag_used
      error_message = "Give the worker its secrets: secret_arns (app, proxy and master secrets) and/or secret_tag_key with secret_tag_value."
    }
    precondition {
      condition     = (var.secret_tag_key == null) == (var.secret_tag_value == null)
      error_message = "Set secret_tag_key and secret_tag_value together, or neither."
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "rds-rotator"
  role   = aws_iam_role.task.id
  policy = local.task_policy
}

# ECS agent: pulls the image and writes the logs.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  description        = "rds-rotator: ECS task execution (image pull, logs)"
  assume_role_policy = local.ecs_execution_trust
  tags               = var.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "ecs-task-execution"
  role   = aws_iam_role.execution.id
  policy = local.execution_policy
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name}-scheduler"
  description        = "rds-rotator: EventBridge Scheduler sends rotation requests"
  assume_role_policy = local.scheduler_trust
  tags               = var.tags
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "send-rotation-requests"
  role   = aws_iam_role.scheduler.id
  policy = local.scheduler_policy
}
