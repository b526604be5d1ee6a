provider "aws" {
  region = var.region
}

locals {
  tags = {
    project = "billing"
    owner   = "platform"
  }
  clone = "${var.app_user}${var.clone_suffix}"
  # The users that take turns, as `rds-rotator adopt` set them up.
  users = [var.app_user, local.clone]
}

################################################################################
# What was there before adoption: the database, its user, the application's
# single-user secret and the master secret. Nothing here changes them.
################################################################################

data "aws_secretsmanager_secret" "app" {
  name = var.app_secret_name
}

data "aws_secretsmanager_secret" "master" {
  arn = var.master_secret_arn
}

################################################################################
# What `rds-rotator adopt` made: one RDS Proxy secret per user, named
# <application secret>/proxy/<user>, with the application secret's KMS key and
# tags. Run adopt first (docs/src/getting-started/adopting.md); these
# lookups fail until it has run.
################################################################################

data "aws_secretsmanager_secret" "proxy" {
  for_each = toset(local.users)
  name     = "${var.app_secret_name}/proxy/${each.key}"
}

################################################################################
# RDS Proxy: a secret for each user. These are the `auth` blocks adopt prints;
# without the clone's, RDS Proxy refuses every login after the first rotation
# ("no credentials for the role"), and `rds-rotator check` fails.
################################################################################

resource "aws_iam_role" "proxy" {
  name = "billing-db-proxy"
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
        Resource = [for s in data.aws_secretsmanager_secret.proxy : s.arn]
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

resource "aws_db_proxy" "billing" {
  name                   = "billing"
  engine_family          = var.engine_family
  role_arn               = aws_iam_role.proxy.arn
  vpc_subnet_ids         = var.private_subnet_ids
  vpc_security_group_ids = [var.proxy_security_group_id]
  require_tls            = true
  debug_logging          = false

  # One block per user, in rotation order.
  dynamic "auth" {
    for_each = local.users
    content {
      auth_scheme = "SECRETS"
      iam_auth    = "DISABLED"
      secret_arn  = data.aws_secretsmanager_secret.proxy[auth.value].arn
      description = "${auth.value}, rotated by rds-rotator"
    }
  }

  tags = local.tags
}

resource "aws_db_proxy_default_target_group" "billing" {
  db_proxy_name = aws_db_proxy.billing.name
}

resource "aws_db_proxy_target" "billing" {
  db_proxy_name          = aws_db_proxy.billing.name
  target_group_name      = aws_db_proxy_default_target_group.billing.name
  db_instance_identifier = var.db_instance_identifier
}

################################################################################
# rds-rotator
################################################################################

module "rotator" {
  source = "../../"

  name  = "rds-rotator"
  image = var.image
  tags  = local.tags

  # The application secret, both proxy secrets, and the master secret, which adopt named in
  # the application secret (master_secret_id) for accounts on several hosts and recovery.
  secret_arns = concat(
    [data.aws_secretsmanager_secret.app.arn, data.aws_secretsmanager_secret.master.arn],
    [for u in local.users : data.aws_secretsmanager_secret.proxy[u].arn],
  )
  secrets_kms_key_arns = [var.kms_key_arn]
  kms_key_arn          = var.kms_key_arn

  schedules = {
    billing = {
      secret_id           = data.aws_secretsmanager_secret.app.arn
      schedule_expression = "rate(30 days)"
      reason              = "monthly rotation"
    }
  }

  vpc_id                      = var.vpc_id
  subnet_ids                  = var.private_subnet_ids
  database_security_group_ids = [var.proxy_security_group_id, var.db_security_group_id]
  db_ports                    = [var.db_port]

  db_ca_bundle       = "/etc/ssl/certs/rds-global-bundle.pem"
  log_retention_days = 365
}
