provider "aws" {
  region = var.region
}

locals {
  tags = {
    project = "shop"
    owner   = "platform"
  }
}

################################################################################
# The secrets, adopted before (`rds-rotator adopt`, docs/src/getting-started/adopting.md): the
# application's secret and one RDS Proxy secret per user.
################################################################################

data "aws_secretsmanager_secret" "app" {
  name = var.app_secret_name
}

data "aws_secretsmanager_secret" "proxy" {
  for_each = toset(var.users)
  name     = "${var.app_secret_name}/proxy/${each.key}"
}

################################################################################
# The queue deployment, scaled to zero: on-demand requests (`rds-rotator
# enqueue`, EventBridge rules) and a forced quarterly rotation. It owns the lease
# table, which the function shares.
################################################################################

module "rotator" {
  source = "../../"

  name  = "rds-rotator"
  image = var.image
  tags  = local.tags

  secret_arns          = concat([data.aws_secretsmanager_secret.app.arn], [for s in data.aws_secretsmanager_secret.proxy : s.arn])
  secrets_kms_key_arns = [var.kms_key_arn]
  kms_key_arn          = var.kms_key_arn

  schedules = {
    shop-quarterly = {
      secret_id           = data.aws_secretsmanager_secret.app.arn
      schedule_expression = "cron(0 4 1 1,4,7,10 ? *)"
      timezone            = "Europe/Berlin"
      force               = true
      reason              = "quarterly forced rotation (audit)"
    }
  }

  # No task while nothing is to do; the first request after an idle spell waits 2 to 5 minutes.
  autoscaling = { min_count = 0, max_count = 2 }

  # The function is this tool: secrets whose Secrets Manager rotation is attached to it are not
  # refused by the worker. Its widgets go on this module's dashboard.
  rotation_function_arns = [module.rotation_function.function_arn]

  vpc_id                      = var.vpc_id
  subnet_ids                  = var.private_subnet_ids
  database_security_group_ids = [var.proxy_security_group_id, var.db_security_group_id]
  db_ports                    = [var.db_port]

  db_ca_bundle  = "/etc/ssl/certs/rds-global-bundle.pem"
  alarm_actions = [var.alarm_topic_arn]
  ok_actions    = [var.alarm_topic_arn]
}

################################################################################
# The Secrets Manager rotation function: Secrets Manager rotates the application
# secret every 30 days within a 3-hour window (and on `aws secretsmanager
# rotate-secret`), calling the same binary, on the queue deployment's table.
################################################################################

module "rotation_function" {
  source = "../../modules/lambda"

  name = "rds-rotator-lambda"
  tags = local.tags

  # The image the worker runs; its ENTRYPOINT rds-rotator, with the command lambda.
  package_type = "Image"
  image_uri    = var.image

  rotations = {
    shop = {
      secret_arn          = data.aws_secretsmanager_secret.app.arn
      schedule_expression = "rate(30 days)"
      duration            = "3h"
    }
  }
  secret_arns          = [for s in data.aws_secretsmanager_secret.proxy : s.arn]
  secrets_kms_key_arns = [var.kms_key_arn]
  kms_key_arn          = var.kms_key_arn

  # One table: the two never rotate a secret at once, and each resumes what the other left.
  create_table = false
  table_name   = module.rotator.table_name

  vpc_id                      = var.vpc_id
  subnet_ids                  = var.private_subnet_ids
  database_security_group_ids = [var.proxy_security_group_id, var.db_security_group_id]
  db_ports                    = [var.db_port]

  db_ca_bundle = "/etc/ssl/certs/rds-global-bundle.pem"

  # The queue module's dashboard and metric alarms cover this function's rotations too (one
  # namespace, no dimensions); the function's own error alarm stays.
  create_dashboard     = false
  create_metric_alarms = false
  alarm_actions        = [var.alarm_topic_arn]
  ok_actions           = [var.alarm_topic_arn]
}

################################################################################
# The proxy and the database admit the worker and the function.
################################################################################

locals {
  ingress = {
    proxy_from_worker   = { sg = var.proxy_security_group_id, from = module.rotator.security_group_id, what = "rds-rotator worker: test step through the proxy" }
    proxy_from_function = { sg = var.proxy_security_group_id, from = module.rotation_function.security_group_id, what = "rds-rotator function: test step through the proxy" }
    db_from_worker      = { sg = var.db_security_group_id, from = module.rotator.security_group_id, what = "rds-rotator worker: ALTER ROLE (direct_host)" }
    db_from_function    = { sg = var.db_security_group_id, from = module.rotation_function.security_group_id, what = "rds-rotator function: ALTER ROLE (direct_host)" }
  }
}

resource "aws_vpc_security_group_ingress_rule" "rotator" {
  for_each = local.ingress

  security_group_id            = each.value.sg
  description                  = each.value.what
  ip_protocol                  = "tcp"
  from_port                    = var.db_port
  to_port                      = var.db_port
  referenced_security_group_id = each.value.from
}
