################################################################################
# IAM: the function's execution role. Built as plain data and rendered with
# jsonencode, as in the root module's iam.tf, so that the tests see the exact
# document. The statements that grant secrets, their keys, the table and the
# event bus follow the worker's task role; the function never receives from a
# queue (no SQS at all) and never lists secrets (no tag fan-out, so no
# secretsmanager:ListSecrets, which IAM would only grant on "*").
################################################################################

locals {
  event_bus_arn = var.event_bus_name == null ? null : (
    startswith(var.event_bus_name, "arn:") ? var.event_bus_name :
    "arn:${local.partition}:events:${local.region}:${local.account_id}:event-bus/${var.event_bus_name}"
  )

  # The same four as the worker: read the secret and its versions, write the new version, move
  # the staging labels.
  secret_actions = [
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
  ]
  granted_secret_arns = distinct(concat([for r in var.rotations : r.secret_arn], var.secret_arns))

  ec2_arn = "arn:${local.partition}:ec2:${local.region}:${local.account_id}"

  statements = concat(
    length(local.granted_secret_arns) > 0 ? [{
      Sid       = "ManagedSecretsByArn"
      Effect    = "Allow"
      Action    = local.secret_actions
      Resource  = local.granted_secret_arns
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
        # Leases and step records, as the worker: the function never creates or describes it.
        Sid       = "LeaseTable"
        Effect    = "Allow"
        Action    = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
        Resource  = [local.table_arn]
        Condition = null
      },
      {
        # Lambda writes the function's output there under this role; the module creates the group.
        Sid       = "Logs"
        Effect    = "Allow"
        Action    = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource  = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
        Condition = null
      },
      {
        # A VPC function's network interfaces, which Lambda creates with the role's permissions:
        # in the function's subnets and security group only.
        Sid    = "NetworkInterfacesCreate"
        Effect = "Allow"
        Action = ["ec2:CreateNetworkInterface"]
        Resource = concat(
          ["${local.ec2_arn}:network-interface/*", "${local.ec2_arn}:security-group/${aws_security_group.this.id}"],
          [for s in var.subnet_ids : "${local.ec2_arn}:subnet/${s}"],
        )
        Condition = null
      },
      {
        # Lambda documents no narrower resource for these than the account's network interfaces
        # (it names the interface it manages, whose id nobody knows beforehand).
        Sid       = "NetworkInterfacesManage"
        Effect    = "Allow"
        Action    = ["ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"]
        Resource  = ["${local.ec2_arn}:network-interface/*"]
        Condition = null
      },
      {
        # A rotation asks RDS for the readers, replicas and Blue/Green deployments of its
        # database (ROTATOR_RDS_DISCOVERY). Read only, this account and region's instances and
        # clusters.
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
        # Describe calls have no resource-level permissions: IAM evaluates them against "*" only.
        Sid       = "NetworkInterfacesDescribe"
        Effect    = "Allow"
        Action    = ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"]
        Resource  = ["*"]
        Condition = null
      },
    ],
    length(var.proxy_arns) > 0 ? [{
      # The configuration test (rds-rotator check) reads the proxies' Auth lists.
      Sid       = "ProxyAuthList"
      Effect    = "Allow"
      Action    = ["rds:DescribeDBProxies"]
      Resource  = var.proxy_arns
      Condition = null
    }] : [],
    var.event_bus_name != null ? [{
      Sid       = "ResultEvents"
      Effect    = "Allow"
      Action    = ["events:PutEvents"]
      Resource  = [local.event_bus_arn]
      Condition = null
    }] : [],
    var.kms_key_arn != null ? [{
      # The table's key, through DynamoDB. The log group's and the environment's are used by
      # CloudWatch Logs and by Lambda (with a grant), not by the role.
      Sid       = "ModuleResourcesKms"
      Effect    = "Allow"
      Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
      Resource  = [var.kms_key_arn]
      Condition = { StringEquals = { "kms:ViaService" = ["dynamodb.${local.region}.${local.dns_suffix}"] } }
    }] : [],
  )

  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [for s in local.statements : { for k, v in s : k => v if v != null }]
  })

  # The service principal alone, as the root module's ECS execution role: Lambda also assumes
  # the role outside the function's own calls (to create the network interfaces), and documents
  # no aws:SourceArn/aws:SourceAccount for those; a condition on a key it does not send would
  # fail closed, and the function could not be created. Who may hand the role to a function is
  # decided by iam:PassRole.
  trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role" "this" {
  name               = var.name
  description        = "rds-rotator rotation function: rotates the managed secrets"
  assume_role_policy = local.trust
  tags               = var.tags

  lifecycle {
    precondition {
      condition     = length(local.granted_secret_arns) > 0 || local.secret_tag_used
      error_message = "Give the function its secrets: rotations (the rotated secrets), secret_arns (their proxy and master secrets) and/or secret_tag_key with secret_tag_value."
    }
    precondition {
      condition     = (var.secret_tag_key == null) == (var.secret_tag_value == null)
      error_message = "Set secret_tag_key and secret_tag_value together, or neither."
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "rds-rotator"
  role   = aws_iam_role.this.id
  policy = local.policy
}
