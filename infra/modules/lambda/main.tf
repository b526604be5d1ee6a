################################################################################
# rds-rotator as a Secrets Manager rotation function: the same binary as the
# queue worker, run as `rds-rotator lambda` (it serves the Lambda Runtime API).
# Secrets Manager invokes it once per step (createSecret, setSecret, testSecret,
# finishSecret), synchronously, for each secret whose rotation is attached here.
################################################################################

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition
  dns_suffix = data.aws_partition.current.dns_suffix

  # The binary's default table, which the queue deployment also uses with its default name.
  table_name      = coalesce(var.table_name, "rds-rotator")
  table_arn       = var.create_table ? aws_dynamodb_table.this[0].arn : "arn:${local.partition}:dynamodb:${local.region}:${local.account_id}:table/${local.table_name}"
  log_group_name  = "/aws/lambda/${var.name}"
  secret_tag_used = var.secret_tag_key != null && var.secret_tag_value != null

  # humantime ("90s", "2m", "2h", "1d") in seconds, for the checks against the function's timeout
  # and the rotation schedules. test_deadline null is the binary's default, 60s.
  seconds_per_unit      = { ms = 0.001, s = 1, m = 60, h = 3600, d = 86400 }
  test_deadline         = coalesce(var.test_deadline, "60s")
  test_deadline_seconds = tonumber(regex("^([0-9]+)", local.test_deadline)[0]) * local.seconds_per_unit[regex("(ms|s|m|h|d)$", local.test_deadline)[0]]
  min_interval_seconds  = tonumber(regex("^([0-9]+)", var.min_interval)[0]) * local.seconds_per_unit[regex("(ms|s|m|h|d)$", var.min_interval)[0]]
  # `lambda`'s own default is 60s; a value in extra_environment that is not a single number and
  # unit (1m30s) is not checked here.
  lease_wait         = lookup(var.extra_environment, "ROTATOR_LEASE_WAIT", "60s")
  lease_wait_seconds = try(tonumber(regex("^([0-9]+)(ms|s|m|h|d)$", local.lease_wait)[0]) * local.seconds_per_unit[regex("^([0-9]+)(ms|s|m|h|d)$", local.lease_wait)[1]], 0)

  # The shortest time between two rotations of a rate() schedule: the interval minus the window
  # (one rotation at the end of its window, the next at the start of the following one). null for
  # cron(), whose windows this module does not compute.
  rotation_min_gap_seconds = {
    for k, r in var.rotations : k => (
      can(regex("^rate\\(([0-9]+) (hour|day)s?\\)$", r.schedule_expression)) ? (
        tonumber(regex("^rate\\(([0-9]+) ", r.schedule_expression)[0]) * (strcontains(r.schedule_expression, "hour") ? 3600 : 86400)
        -tonumber(trimsuffix(r.duration, "h")) * 3600
      ) : null
    )
  }

  # Unset optional settings are left out, so the binary's own defaults apply. No queue settings:
  # Secrets Manager calls the function, nothing is received. No AWS_REGION: Lambda reserves it
  # and sets it itself.
  environment_map = merge(var.extra_environment, {
    ROTATOR_TABLE             = local.table_name
    ROTATOR_MIN_INTERVAL      = var.min_interval
    ROTATOR_IN_USE            = var.in_use
    ROTATOR_IN_USE_WINDOW     = var.in_use_window
    ROTATOR_LOG_FORMAT        = "json"
    ROTATOR_DB_TLS            = var.db_tls
    ROTATOR_DB_CA_BUNDLE      = var.db_ca_bundle
    ROTATOR_TEST_DEADLINE     = var.test_deadline
    ROTATOR_METRICS           = "emf"
    ROTATOR_METRICS_NAMESPACE = var.metrics_namespace
    ROTATOR_EVENT_BUS         = var.event_bus_name
    # The quota is per account and region: concurrent instances share it.
    ROTATOR_SM_WRITE_TPS = tostring(max(1, floor(var.secretsmanager_write_tps / coalesce(var.reserved_concurrency, 1))))
    RUST_LOG             = var.log_level
  })
  environment = { for k, v in local.environment_map : k => v if v != null }
}

################################################################################
# DynamoDB: leases and step records, unless the queue deployment's table is
# shared (create_table = false). The key schema is the binary's, as in the root
# module: one string hash key, secret_arn.
################################################################################

resource "aws_dynamodb_table" "this" {
  #checkov:skip=CKV_AWS_119:A customer-managed key is optional (var.kms_key_arn); by default the table is encrypted with the AWS-managed aws/dynamodb key.
  count = var.create_table ? 1 : 0

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
# CloudWatch Logs: created here, before the function's first invocation, so that
# Lambda does not create it without retention. The function's EMF lines become
# metrics from this log group.
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:A customer-managed key is optional (var.kms_key_arn); log groups are always encrypted by CloudWatch Logs, and the function never logs secret values.
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, operational logs); the audit trail of rotations is the step record, Secrets Manager's version history and CloudTrail.
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

################################################################################
# The function
################################################################################

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:Secrets Manager invokes rotation functions synchronously, one call per step, and retries a failed rotation itself; a dead-letter queue only receives failed asynchronous invocations, of which there are none.
  #checkov:skip=CKV_AWS_115:Reserved concurrency is optional (var.reserved_concurrency): reserving it takes capacity from the account's other functions, and Secrets Manager invokes one step per secret at a time.
  #checkov:skip=CKV_AWS_173:The environment holds settings and names only (no secret: the function reads secrets from Secrets Manager at run time); it is encrypted at rest with the AWS-managed key, or with var.kms_key_arn when set.
  #checkov:skip=CKV_AWS_272:Code signing is optional (var.code_signing_config_arn) and applies to zip packages only; images are pinned by tag or digest in the account's own ECR.
  function_name = var.name
  description   = "rds-rotator: Secrets Manager rotation function (rds-rotator lambda)"
  role          = aws_iam_role.this.arn
  package_type  = var.package_type
  architectures = [var.architecture]
  memory_size   = var.memory_size
  timeout       = var.timeout_seconds

  # Zip: provided.al2023 runs the zip's `bootstrap`, a shell script that execs `rds-rotator lambda`
  # beside it; the handler name is not used by a custom runtime, but the API requires one.
  filename                = var.package_type == "Zip" ? var.zip_path : null
  source_code_hash        = var.package_type == "Zip" && var.zip_path != null ? filebase64sha256(var.zip_path) : null
  runtime                 = var.package_type == "Zip" ? "provided.al2023" : null
  handler                 = var.package_type == "Zip" ? "bootstrap" : null
  code_signing_config_arn = var.package_type == "Zip" ? var.code_signing_config_arn : null

  # Image: the image's ENTRYPOINT is rds-rotator (CMD worker, for ECS); here the command is lambda.
  image_uri = var.package_type == "Image" ? var.image_uri : null
  dynamic "image_config" {
    for_each = var.package_type == "Image" ? ["lambda"] : []
    content {
      command = [image_config.value]
    }
  }

  reserved_concurrent_executions = coalesce(var.reserved_concurrency, -1)
  kms_key_arn                    = var.kms_key_arn

  environment {
    variables = local.environment
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.this.id]
  }

  # X-Ray: passes on a trace header it is given; no tracing of its own (no xray permission).
  tracing_config {
    mode = "PassThrough"
  }

  tags = var.tags

  # The log group first (else Lambda makes one without retention), and the role's permissions
  # (the network interfaces are created with them when the function is).
  depends_on = [aws_cloudwatch_log_group.this, aws_iam_role_policy.this]

  lifecycle {
    precondition {
      condition     = var.package_type == "Zip" ? var.zip_path != null : var.image_uri != null
      error_message = "package_type Zip needs zip_path; package_type Image needs image_uri."
    }
    precondition {
      condition     = var.timeout_seconds >= local.test_deadline_seconds + local.lease_wait_seconds + 40
      error_message = "timeout_seconds must be at least test_deadline (60s by default) plus the lease wait (ROTATOR_LEASE_WAIT, 60s by default) plus 40s: a step may wait that long for another process's lease, the test step then retries the new credentials for test_deadline, and the function stops 10s before Lambda's deadline to write down where it stopped (30s are left for its other calls)."
    }
    precondition {
      condition     = length(var.database_security_group_ids) + length(var.database_cidr_blocks) > 0
      error_message = "The function must reach the database and the proxy: set database_security_group_ids and/or database_cidr_blocks."
    }
  }
}

################################################################################
# Secrets Manager may invoke the function, for the rotated secrets of this
# account only (confused deputy: aws:SourceAccount and aws:SourceArn = the
# secret). One statement per secret; a function policy holds at most 20 KB,
# which is room for roughly 50 of them.
################################################################################

resource "aws_lambda_permission" "secretsmanager" {
  for_each = var.rotations

  statement_id   = "SecretsManager-${each.key}"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.this.function_name
  principal      = "secretsmanager.amazonaws.com"
  source_account = local.account_id
  source_arn     = each.value.secret_arn
}

resource "aws_secretsmanager_secret_rotation" "this" {
  #checkov:skip=CKV_AWS_304:The schedule is the caller's (var.rotations, often rate(30 days)), checked against Secrets Manager's limits and min_interval; how often each secret rotates is the operator's policy, not this module's, and checkov cannot read it through the variable.
  for_each = var.rotations

  secret_id           = each.value.secret_arn
  rotation_lambda_arn = aws_lambda_function.this.arn
  rotate_immediately  = var.rotate_immediately

  rotation_rules {
    schedule_expression = each.value.schedule_expression
    duration            = each.value.duration
  }

  # Secrets Manager checks that it may invoke the function when the rotation is attached.
  depends_on = [aws_lambda_permission.secretsmanager]

  lifecycle {
    precondition {
      # Cross-account rotation needs PutSecretValue's RotationToken, which the binary does not use.
      condition     = split(":", each.value.secret_arn)[3] == local.region && split(":", each.value.secret_arn)[4] == local.account_id
      error_message = "The rotation ${each.key}'s secret must be in the function's own account and region (${local.account_id}, ${local.region})."
    }
    precondition {
      condition     = local.rotation_min_gap_seconds[each.key] == null ? true : local.rotation_min_gap_seconds[each.key] >= local.min_interval_seconds
      error_message = "The rotation ${each.key} can come sooner after the previous one than min_interval (${var.min_interval}): its rate() interval minus its ${each.value.duration} window is shorter, so the later rotation would be skipped. Lengthen the interval, shorten the window, or lower min_interval."
    }
    precondition {
      condition     = local.rotation_min_gap_seconds[each.key] == null ? true : local.rotation_min_gap_seconds[each.key] > 0
      error_message = "The rotation ${each.key}'s window (${each.value.duration}) must be shorter than its rate() interval: Secrets Manager refuses a window that reaches into the next one."
    }
  }
}

################################################################################
# Security group: no ingress; egress to the database/proxy and to the AWS APIs
################################################################################

locals {
  # count, not for_each: ids created in the same configuration are unknown at plan time.
  db_sg_rules   = [for pair in setproduct(var.database_security_group_ids, var.db_ports) : { sg = pair[0], port = pair[1] }]
  db_cidr_rules = [for pair in setproduct(var.database_cidr_blocks, var.db_ports) : { cidr = pair[0], port = pair[1] }]
}

resource "aws_security_group" "this" {
  name        = var.name
  description = "rds-rotator rotation function: no ingress; egress to the database, RDS Proxy and AWS APIs"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "database_sg" {
  count = length(local.db_sg_rules)

  security_group_id            = aws_security_group.this.id
  description                  = "Database / RDS Proxy"
  ip_protocol                  = "tcp"
  from_port                    = local.db_sg_rules[count.index].port
  to_port                      = local.db_sg_rules[count.index].port
  referenced_security_group_id = local.db_sg_rules[count.index].sg
  tags                         = var.tags
}

resource "aws_vpc_security_group_egress_rule" "database_cidr" {
  count = length(local.db_cidr_rules)

  security_group_id = aws_security_group.this.id
  description       = "Database / RDS Proxy"
  ip_protocol       = "tcp"
  from_port         = local.db_cidr_rules[count.index].port
  to_port           = local.db_cidr_rules[count.index].port
  cidr_ipv4         = local.db_cidr_rules[count.index].cidr
  tags              = var.tags
}

resource "aws_vpc_security_group_egress_rule" "https_cidr" {
  count = length(var.https_egress_cidr_blocks)

  security_group_id = aws_security_group.this.id
  description       = "AWS APIs (HTTPS)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = var.https_egress_cidr_blocks[count.index]
  tags              = var.tags
}

resource "aws_vpc_security_group_egress_rule" "https_prefix_list" {
  count = length(var.https_egress_prefix_list_ids)

  security_group_id = aws_security_group.this.id
  description       = "AWS APIs (HTTPS), prefix list"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = var.https_egress_prefix_list_ids[count.index]
  tags              = var.tags
}
