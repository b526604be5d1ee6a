data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition
  dns_suffix = data.aws_partition.current.dns_suffix

  table_name      = coalesce(var.table_name, var.name)
  container_name  = "rds-rotator"
  health_file     = "/tmp/rds-rotator.health"
  log_group_name  = "/ecs/${var.name}"
  cluster_arn     = var.create_cluster ? aws_ecs_cluster.this[0].arn : var.cluster_arn
  schedule_group  = var.create_schedule_group ? aws_scheduler_schedule_group.this[0].name : var.schedule_group_name
  secret_tag_used = var.secret_tag_key != null && var.secret_tag_value != null

  # The worker's own message formats (docs/src/operating/worker.md "Messages", src/message.rs). jsonencode sorts keys;
  # request_id is left out on purpose: the worker then uses the SQS message id, which is new for
  # every delivery of a schedule, whereas a fixed request_id would make every later run a duplicate.
  schedule_inputs = {
    for k, s in var.schedules : k => jsonencode({
      secret_id = s.secret_id
      force     = s.force
      reason    = s.reason
    })
  }
  fanout_input = var.fanout_schedule == null ? null : jsonencode({
    select = {
      tag_key   = var.fanout_schedule.tag_key
      tag_value = var.fanout_schedule.tag_value
    }
  })
}

################################################################################
# DynamoDB: leases and step records. The key schema is owned by the binary
# (`rds-rotator setup` creates the same): one string hash key, secret_arn.
################################################################################

resource "aws_dynamodb_table" "this" {
  #checkov:skip=CKV_AWS_119:A customer-managed key is optional (var.kms_key_arn); by default the table is encrypted with the AWS-managed aws/dynamodb key.
  name                        = local.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "secret_arn"
  deletion_protection_enabled = var.table_deletion_protection

  attribute {
    name = "secret_arn"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = var.tags
}

################################################################################
# SQS: request queue and dead-letter queue
################################################################################

resource "aws_sqs_queue" "dlq" {
  name                              = "${var.name}-dlq"
  message_retention_seconds         = 1209600
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn == null ? null : 300

  tags = var.tags
}

resource "aws_sqs_queue" "this" {
  name                              = var.name
  visibility_timeout_seconds        = var.visibility_timeout_seconds
  message_retention_seconds         = var.message_retention_seconds
  receive_wait_time_seconds         = 20
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn == null ? null : 300

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = var.tags
}

# Only the request queue may use the DLQ as its dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.this.arn]
  })
}

# Refuse requests that are not over TLS. Access itself is granted by the IAM roles.
resource "aws_sqs_queue_policy" "this" {
  for_each = {
    queue = aws_sqs_queue.this
    dlq   = aws_sqs_queue.dlq
  }

  queue_url = each.value.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = { AWS = "*" }
      Action    = "sqs:*"
      Resource  = each.value.arn
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

################################################################################
# CloudWatch Logs
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:A customer-managed key is optional (var.kms_key_arn); log groups are always encrypted by CloudWatch Logs, and the worker never logs secret values.
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, operational logs); the audit trail of rotations is the step record, Secrets Manager's version history and CloudTrail.
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}
