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
# The secrets: the application's secret (rotated) and one RDS Proxy secret per
# database user. Their values are written once, outside Terraform, so that no
# password lands in the state (see README.md, "Seeding the secrets").
################################################################################

resource "aws_secretsmanager_secret" "app" {
  #checkov:skip=CKV2_AWS_57:Rotated by rds-rotator (the schedules below), not by a Secrets Manager rotation Lambda.
  name        = "prod/shop/app"
  description = "Credentials the shop uses (AWSCURRENT), rotated by rds-rotator between app and app_clone"
  kms_key_id  = var.kms_key_arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret" "proxy" {
  #checkov:skip=CKV2_AWS_57:Rotated by rds-rotator as part of the app secret's rotation, not by a Secrets Manager rotation Lambda.
  for_each = toset(["app", "app_clone"])

  name        = "prod/shop/proxy/${each.key}"
  description = "RDS Proxy credentials of database user ${each.key}"
  kms_key_id  = var.kms_key_arn
  tags        = local.tags
}

################################################################################
# RDS Proxy in front of the database, authenticating both users with their secrets
################################################################################

resource "aws_security_group" "proxy" {
  #checkov:skip=CKV2_AWS_5:Attached to aws_db_proxy.shop (vpc_security_group_ids), which this check does not recognise as an attachment.
  name        = "shop-db-proxy"
  description = "RDS Proxy for the shop database"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "proxy_from_rotator" {
  security_group_id            = aws_security_group.proxy.id
  description                  = "rds-rotator worker: test step logs in through the proxy"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = module.rotator.security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "db_from_rotator" {
  security_group_id            = var.db_security_group_id
  description                  = "rds-rotator worker: ALTER ROLE on the database (direct_host)"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = module.rotator.security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "db_from_proxy" {
  security_group_id            = var.db_security_group_id
  description                  = "RDS Proxy to the database"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.proxy.id
}

resource "aws_vpc_security_group_egress_rule" "proxy_to_db" {
  security_group_id            = aws_security_group.proxy.id
  description                  = "RDS Proxy to the database"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = var.db_security_group_id
}

resource "aws_iam_role" "proxy" {
  name = "shop-db-proxy"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy" "proxy" {
  name = "read-proxy-secrets"
  role = aws_iam_role.proxy.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [for s in aws_secretsmanager_secret.proxy : s.arn]
      },
      {
        Effect    = "Allow"
        Action    = ["kms:Decrypt"]
        Resource  = [var.kms_key_arn]
        Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${var.region}.amazonaws.com" } }
      },
    ]
  })
}

resource "aws_db_proxy" "shop" {
  name                   = "shop"
  engine_family          = "POSTGRESQL"
  role_arn               = aws_iam_role.proxy.arn
  vpc_subnet_ids         = var.private_subnet_ids
  vpc_security_group_ids = [aws_security_group.proxy.id]
  require_tls            = true
  debug_logging          = false

  dynamic "auth" {
    for_each = aws_secretsmanager_secret.proxy
    content {
      auth_scheme = "SECRETS"
      iam_auth    = "DISABLED"
      secret_arn  = auth.value.arn
      description = "database user ${auth.key}"
    }
  }

  tags = local.tags
}

resource "aws_db_proxy_default_target_group" "shop" {
  db_proxy_name = aws_db_proxy.shop.name
}

resource "aws_db_proxy_target" "shop" {
  db_proxy_name         = aws_db_proxy.shop.name
  target_group_name     = aws_db_proxy_default_target_group.shop.name
  db_cluster_identifier = var.db_cluster_identifier
}

################################################################################
# Alarm notifications
################################################################################

resource "aws_sns_topic" "alarms" {
  name              = "rds-rotator-alarms"
  kms_master_key_id = var.kms_key_arn
  tags              = local.tags
}

resource "aws_sns_topic_subscription" "alarms" {
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

################################################################################
# rds-rotator
################################################################################

module "rotator" {
  source = "../../"

  name  = "rds-rotator"
  image = var.image
  tags  = local.tags

  # Every secret the worker touches: the app secret and both proxy secrets.
  secret_arns          = concat([aws_secretsmanager_secret.app.arn], [for s in aws_secretsmanager_secret.proxy : s.arn])
  secrets_kms_key_arns = [var.kms_key_arn]
  kms_key_arn          = var.kms_key_arn

  schedules = {
    shop-app = {
      secret_id           = aws_secretsmanager_secret.app.arn
      schedule_expression = "rate(30 days)"
      reason              = "monthly rotation"
    }
    # A forced rotation every quarter at a fixed time, even if one ran recently.
    shop-app-quarterly = {
      secret_id           = aws_secretsmanager_secret.app.arn
      schedule_expression = "cron(0 4 1 1,4,7,10 ? *)"
      timezone            = "Europe/Berlin"
      force               = true
      reason              = "quarterly forced rotation (audit)"
    }
  }

  vpc_id                      = var.vpc_id
  subnet_ids                  = var.private_subnet_ids
  database_security_group_ids = [aws_security_group.proxy.id, var.db_security_group_id]
  db_ports                    = [5432]

  db_ca_bundle       = "/etc/ssl/certs/rds-global-bundle.pem"
  log_retention_days = 365
  alarm_actions      = [aws_sns_topic.alarms.arn]
  ok_actions         = [aws_sns_topic.alarms.arn]
}
