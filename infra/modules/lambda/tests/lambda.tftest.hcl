# The Secrets Manager rotation function: the package (zip on provided.al2023, or the image with
# the command lambda), its environment (the worker's settings without the queue's), Secrets
# Manager's permission to invoke it and the rotations attached to it, least-privilege IAM (no
# wildcard action, "*" only where IAM allows nothing narrower, no SQS), the network, the lease
# table, the alarms and the dashboard. Mock provider: nothing is created.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  zip_path   = "tests/fixtures/rds-rotator-lambda.zip"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]

  rotations = {
    app = {
      secret_arn          = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"
      schedule_expression = "rate(30 days)"
    }
    billing = {
      secret_arn          = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/billing/db-GhIjKl"
      schedule_expression = "cron(0 4 ? * SUN *)"
      duration            = "2h"
    }
  }
  # The rotated secrets' proxy secrets.
  secret_arns = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db/proxy/*"]

  database_security_group_ids = ["sg-0fedcba9876543210"]
}

run "zip_package" {
  command = apply

  assert {
    condition = (
      aws_lambda_function.this.package_type == "Zip"
      && aws_lambda_function.this.runtime == "provided.al2023"
      && aws_lambda_function.this.handler == "bootstrap"
      && aws_lambda_function.this.filename == "tests/fixtures/rds-rotator-lambda.zip"
      && aws_lambda_function.this.source_code_hash == filebase64sha256("tests/fixtures/rds-rotator-lambda.zip")
      && aws_lambda_function.this.architectures == tolist(["x86_64"])
      && aws_lambda_function.this.image_uri == null
      && length(aws_lambda_function.this.image_config) == 0
    )
    error_message = "The zip package is not provided.al2023 with the zip's bootstrap, x86_64, updated by the zip's hash."
  }

  assert {
    condition = (
      aws_lambda_function.this.function_name == "rds-rotator-lambda"
      && aws_lambda_function.this.timeout == 300 && aws_lambda_function.this.memory_size == 256
      && aws_lambda_function.this.reserved_concurrent_executions < 0
      && aws_lambda_function.this.role == aws_iam_role.this.arn
    )
    error_message = "The function is not rds-rotator-lambda, 300 s, 256 MiB, unreserved, with its role."
  }

  # The worker's settings, minus the queue's; no AWS_REGION (Lambda reserves and sets it).
  assert {
    condition = aws_lambda_function.this.environment[0].variables == tomap({
      ROTATOR_DB_TLS            = "verify-full"
      ROTATOR_IN_USE            = "refuse"
      ROTATOR_IN_USE_WINDOW     = "35m"
      ROTATOR_LOG_FORMAT        = "json"
      ROTATOR_METRICS           = "emf"
      ROTATOR_METRICS_NAMESPACE = "RdsRotator"
      ROTATOR_MIN_INTERVAL      = "2h"
      ROTATOR_SM_WRITE_TPS      = "40"
      ROTATOR_TABLE             = "rds-rotator"
      RUST_LOG                  = "info"
    }) && tomap(output.environment) == aws_lambda_function.this.environment[0].variables
    error_message = "The function's environment is not the expected one."
  }

  assert {
    condition = length(setintersection(keys(aws_lambda_function.this.environment[0].variables), [
      "ROTATOR_QUEUE_URL", "ROTATOR_DLQ_URL", "ROTATOR_CONCURRENCY", "ROTATOR_VISIBILITY_TIMEOUT",
      "ROTATOR_SHUTDOWN_GRACE", "ROTATOR_HEALTH_FILE", "AWS_REGION",
    ])) == 0
    error_message = "The function is given a queue setting, or a variable Lambda reserves."
  }

  # Secrets Manager may invoke it, for each rotated secret of this account only.
  assert {
    condition = alltrue([
      for k, p in aws_lambda_permission.secretsmanager : (
        p.principal == "secretsmanager.amazonaws.com" && p.action == "lambda:InvokeFunction"
        && p.source_account == "123456789012" && p.source_arn == var.rotations[k].secret_arn
        && p.function_name == aws_lambda_function.this.function_name
      )
    ]) && toset(keys(aws_lambda_permission.secretsmanager)) == toset(["app", "billing"])
    error_message = "The permission is not secretsmanager.amazonaws.com, for this account and the rotated secret."
  }

  # The rotations: attached to the function, with the schedule and the window, not at once.
  assert {
    condition = (
      aws_secretsmanager_secret_rotation.this["app"].secret_id == var.rotations.app.secret_arn
      && aws_secretsmanager_secret_rotation.this["app"].rotation_lambda_arn == aws_lambda_function.this.arn
      && aws_secretsmanager_secret_rotation.this["app"].rotation_rules[0].schedule_expression == "rate(30 days)"
      && aws_secretsmanager_secret_rotation.this["app"].rotation_rules[0].duration == "3h"
      && aws_secretsmanager_secret_rotation.this["billing"].rotation_rules[0].schedule_expression == "cron(0 4 ? * SUN *)"
      && aws_secretsmanager_secret_rotation.this["billing"].rotation_rules[0].duration == "2h"
      && alltrue([for r in aws_secretsmanager_secret_rotation.this : r.rotate_immediately == false])
    )
    error_message = "The rotations do not carry the function, their schedule and window, and rotate_immediately = false."
  }

  # IAM: no wildcard in any action; "*" as a resource only for the EC2 describe calls, which have
  # no resource-level permissions; nothing for SQS; no ListSecrets; no NotAction/NotResource.
  assert {
    condition = alltrue(flatten([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : [for a in flatten([s.Action]) : !strcontains(a, "*")]
    ]))
    error_message = "The function's policy uses a wildcard action."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement :
      toset(flatten([s.Action])) == toset(["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"])
      if contains(flatten([s.Resource]), "*")
    ])
    error_message = "A statement other than the EC2 describe calls has Resource \"*\"."
  }

  assert {
    condition = !anytrue(flatten([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : [for a in flatten([s.Action]) : startswith(lower(a), "sqs:") || a == "secretsmanager:ListSecrets"]
    ]))
    error_message = "The function may use SQS or list secrets; it does neither."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : !can(s.NotResource) && !can(s.NotAction) && s.Effect == "Allow"
    ])
    error_message = "The policy uses NotResource/NotAction or is not a plain Allow."
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "ManagedSecretsByArn"]) == {
      Sid    = "ManagedSecretsByArn"
      Effect = "Allow"
      Action = ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"]
      Resource = [
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/billing/db-GhIjKl",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db/proxy/*",
      ]
    }
    error_message = "The secrets statement is not the worker's four actions on the rotated secrets and secret_arns."
  }

  assert {
    condition = toset([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Sid]) == toset([
      "ManagedSecretsByArn", "LeaseTable", "Logs", "NetworkInterfacesCreate", "NetworkInterfacesManage", "NetworkInterfacesDescribe", "DatabaseReaders",
    ])
    error_message = "The policy has statements beyond secrets, table, logs, network interfaces and the readers' describe calls."
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "DatabaseReaders"]) == {
      Sid      = "DatabaseReaders", Effect = "Allow", Action = ["rds:DescribeDBInstances", "rds:DescribeDBClusters", "rds:DescribeBlueGreenDeployments"],
      Resource = ["arn:aws:rds:eu-west-1:123456789012:db:*", "arn:aws:rds:eu-west-1:123456789012:cluster:*", "arn:aws:rds:eu-west-1:123456789012:deployment:*"]
    }
    error_message = "The readers' describe calls are not read only on this account and region's instances and clusters."
  }

  assert {
    condition = (
      one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "LeaseTable"]) == {
        Sid = "LeaseTable", Effect = "Allow", Action = ["dynamodb:GetItem", "dynamodb:UpdateItem"], Resource = [aws_dynamodb_table.this[0].arn]
      }
      && one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "Logs"]).Resource == ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
    )
    error_message = "The table or logs statement is wider than the module's table and log group."
  }

  assert {
    condition = toset(one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "NetworkInterfacesCreate"]).Resource) == toset([
      "arn:aws:ec2:eu-west-1:123456789012:network-interface/*",
      "arn:aws:ec2:eu-west-1:123456789012:security-group/${aws_security_group.this.id}",
      "arn:aws:ec2:eu-west-1:123456789012:subnet/subnet-0123456789abcdef0",
      "arn:aws:ec2:eu-west-1:123456789012:subnet/subnet-0123456789abcdef1",
    ])
    error_message = "Network interfaces may be created outside the function's subnets and security group."
  }

  assert {
    condition = jsondecode(aws_iam_role.this.assume_role_policy).Statement == [{
      Effect = "Allow", Principal = { Service = "lambda.amazonaws.com" }, Action = "sts:AssumeRole"
    }]
    error_message = "The role must be assumable by lambda.amazonaws.com only."
  }

  # Network: the function's own security group, no ingress rule, egress to the database and 443.
  assert {
    condition = (
      aws_lambda_function.this.vpc_config[0].subnet_ids == toset(var.subnet_ids)
      && aws_lambda_function.this.vpc_config[0].security_group_ids == toset([aws_security_group.this.id])
      && [for r in aws_vpc_security_group_egress_rule.database_sg : "${r.referenced_security_group_id}:${r.from_port}-${r.to_port}"] == ["sg-0fedcba9876543210:5432-5432"]
      && [for r in aws_vpc_security_group_egress_rule.https_cidr : "${r.cidr_ipv4}:${r.from_port}-${r.to_port}"] == ["0.0.0.0/0:443-443"]
    )
    error_message = "The function is not in its subnets and security group, with egress to the database and HTTPS only."
  }

  # The table: created with the binary's schema and default name.
  assert {
    condition = (
      length(aws_dynamodb_table.this) == 1 && aws_dynamodb_table.this[0].name == "rds-rotator"
      && aws_dynamodb_table.this[0].hash_key == "secret_arn" && aws_dynamodb_table.this[0].range_key == null
      && length(aws_dynamodb_table.this[0].attribute) == 1 && one(aws_dynamodb_table.this[0].attribute).type == "S"
      && aws_dynamodb_table.this[0].billing_mode == "PAY_PER_REQUEST" && aws_dynamodb_table.this[0].deletion_protection_enabled
    )
    error_message = "The table is not the binary's schema (hash key secret_arn, S), on demand, with deletion protection."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this.name == "/aws/lambda/rds-rotator-lambda" && aws_cloudwatch_log_group.this.retention_in_days == 30
    error_message = "The log group is not /aws/lambda/NAME with 30 days' retention."
  }

  assert {
    condition     = toset(keys(output.alarm_arns)) == toset(["errors", "rotations_failed", "idle_user_in_use"])
    error_message = "The alarms are missing."
  }
}

# The dashboard: the worker's metrics (as the queue deployment's) and the function's, no queue.
run "dashboard" {
  command = apply

  assert {
    condition     = length(aws_cloudwatch_dashboard.this) == 1 && output.dashboard_name == "rds-rotator-lambda"
    error_message = "The function has no dashboard by default."
  }

  assert {
    condition = alltrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) :
      m[0] == "AWS/Lambda" ? (m[2] == "FunctionName" && m[3] == "rds-rotator-lambda") : (
        m[0] == "RdsRotator" && contains(concat(jsondecode(file("../../worker-metrics.json")).metrics, jsondecode(file("../../worker-metrics.json")).step_metrics), m[1])
      )
    ])
    error_message = "A widget names a metric that is neither the function's nor one the worker emits in var.metrics_namespace."
  }

  assert {
    condition = !anytrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) : m[0] == "AWS/SQS"
    ])
    error_message = "The function's dashboard has queue widgets, without a queue."
  }

  assert {
    condition = one([
      for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.annotations.horizontal if w.properties.title == "Rotation function: step duration"
    ]) == [{ label = "timeout", value = 300000 }]
    error_message = "The duration widget does not mark the function's timeout."
  }
}

run "image_arm64_shared_table_tags_and_keys" {
  command = apply

  variables {
    package_type         = "Image"
    zip_path             = null
    image_uri            = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0"
    architecture         = "arm64"
    create_table         = false
    table_name           = "shared-leases"
    secret_arns          = []
    secret_tag_key       = "rds-rotator"
    secret_tag_value     = "managed"
    secrets_kms_key_arns = ["arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"]
    kms_key_arn          = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000"
    event_bus_name       = "ops-events"
    reserved_concurrency = 4
    test_deadline        = "2m"
    timeout_seconds      = 600
    rotate_immediately   = true
    create_dashboard     = false
    create_metric_alarms = false
    proxy_arns           = ["arn:aws:rds:eu-west-1:123456789012:db-proxy:prx-0123456789abcdef0"]
  }

  assert {
    condition = (
      aws_lambda_function.this.package_type == "Image"
      && aws_lambda_function.this.image_uri == var.image_uri
      && aws_lambda_function.this.image_config[0].command == tolist(["lambda"])
      && aws_lambda_function.this.runtime == null && aws_lambda_function.this.handler == null && aws_lambda_function.this.filename == null
      && aws_lambda_function.this.architectures == tolist(["arm64"])
      && aws_lambda_function.this.timeout == 600 && aws_lambda_function.this.reserved_concurrent_executions == 4
      && aws_lambda_function.this.kms_key_arn == var.kms_key_arn
    )
    error_message = "The image package is not the image with the command [\"lambda\"], arm64, 600 s, 4 reserved, with the CMK."
  }

  assert {
    condition = (
      length(aws_dynamodb_table.this) == 0
      && aws_lambda_function.this.environment[0].variables["ROTATOR_TABLE"] == "shared-leases"
      && one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "LeaseTable"]).Resource == ["arn:aws:dynamodb:eu-west-1:123456789012:table/shared-leases"]
      && output.table_arn == "arn:aws:dynamodb:eu-west-1:123456789012:table/shared-leases"
    )
    error_message = "With create_table = false the function must use the named table, and create none."
  }

  assert {
    condition = (
      aws_lambda_function.this.environment[0].variables["ROTATOR_SM_WRITE_TPS"] == "10"
      && aws_lambda_function.this.environment[0].variables["ROTATOR_TEST_DEADLINE"] == "2m"
      && aws_lambda_function.this.environment[0].variables["ROTATOR_EVENT_BUS"] == "ops-events"
    )
    error_message = "The write quota is not split over the reserved concurrency, or a setting is missing."
  }

  assert {
    condition = (
      one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "ManagedSecretsByTag"]).Condition == { StringEquals = { "aws:ResourceTag/rds-rotator" = ["managed"] } }
      && one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "ManagedSecretsByArn"]).Resource == [for r in var.rotations : r.secret_arn]
      && one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "ManagedSecretsKms"]).Condition == { StringEquals = { "kms:ViaService" = ["secretsmanager.eu-west-1.amazonaws.com"] } }
      && one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "ModuleResourcesKms"]).Condition == { StringEquals = { "kms:ViaService" = ["dynamodb.eu-west-1.amazonaws.com"] } }
      && one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "ResultEvents"]).Resource == ["arn:aws:events:eu-west-1:123456789012:event-bus/ops-events"]
      && one([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "ProxyAuthList"]) == {
        Sid = "ProxyAuthList", Effect = "Allow", Action = ["rds:DescribeDBProxies"], Resource = ["arn:aws:rds:eu-west-1:123456789012:db-proxy:prx-0123456789abcdef0"]
      }
    )
    error_message = "Tag grant, secrets' keys, the table's key, the event bus or the proxies are not scoped as the worker's (or the given proxies)."
  }

  # Whatever is configured, no secretsmanager action on "*" and no wildcard action.
  assert {
    condition = alltrue(flatten([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : [
        for a in flatten([s.Action]) : !strcontains(a, "*") && !(startswith(a, "secretsmanager:") && contains(flatten([s.Resource]), "*"))
      ]
    ]))
    error_message = "A wildcard action, or a secretsmanager action on Resource \"*\"."
  }

  assert {
    condition     = alltrue([for r in aws_secretsmanager_secret_rotation.this : r.rotate_immediately == true])
    error_message = "rotate_immediately is not passed to the rotations."
  }

  assert {
    condition     = length(aws_cloudwatch_dashboard.this) == 0 && toset(keys(output.alarm_arns)) == toset(["errors"])
    error_message = "create_dashboard / create_metric_alarms false still created them."
  }
}

# rate(4 hours), which Secrets Manager allows, with a 1 h window: two rotations at least 3 h
# apart, above the 2 h minimum interval.
run "four_hourly_with_a_short_window" {
  command = apply

  variables {
    rotations = {
      app = {
        secret_arn          = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"
        schedule_expression = "rate(4 hours)"
        duration            = "1h"
      }
    }
  }

  assert {
    condition     = aws_secretsmanager_secret_rotation.this["app"].rotation_rules[0].schedule_expression == "rate(4 hours)"
    error_message = "A 4-hourly rotation with a 1 h window was refused."
  }
}

# The same with a 3 h window: a rotation at the end of one window and the next at the start of
# the following one are 1 h apart, below min_interval (2h), so the second would only be skipped.
run "schedule_closer_than_min_interval_is_refused" {
  command = plan

  variables {
    rotations = {
      app = {
        secret_arn          = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"
        schedule_expression = "rate(4 hours)"
        duration            = "3h"
      }
    }
  }

  expect_failures = [aws_secretsmanager_secret_rotation.this]
}

run "window_as_long_as_the_interval_is_refused" {
  command = plan

  variables {
    min_interval = "0s"
    rotations = {
      app = {
        secret_arn          = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"
        schedule_expression = "rate(6 hours)"
        duration            = "6h"
      }
    }
  }

  expect_failures = [aws_secretsmanager_secret_rotation.this]
}

run "schedule_below_four_hours_is_refused" {
  command = plan

  variables {
    rotations = {
      app = {
        secret_arn          = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"
        schedule_expression = "rate(2 hours)"
        duration            = "1h"
      }
    }
  }

  expect_failures = [var.rotations]
}

run "secret_of_another_account_is_refused" {
  command = plan

  variables {
    rotations = {
      app = { secret_arn = "arn:aws:secretsmanager:eu-west-1:210987654321:secret:prod/app/db-AbCdEf", schedule_expression = "rate(30 days)" }
    }
  }

  expect_failures = [aws_secretsmanager_secret_rotation.this]
}

run "wildcard_rotation_secret_is_refused" {
  command = plan

  variables {
    rotations = {
      app = { secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/*", schedule_expression = "rate(30 days)" }
    }
  }

  expect_failures = [var.rotations]
}

run "timeout_not_above_test_deadline_is_refused" {
  command = plan

  variables {
    test_deadline   = "5m"
    timeout_seconds = 300
  }

  expect_failures = [aws_lambda_function.this]
}

# 60s of test deadline and 200s of lease wait do not fit in 250s.
run "timeout_below_test_deadline_plus_lease_wait_is_refused" {
  command = plan

  variables {
    timeout_seconds   = 250
    extra_environment = { ROTATOR_LEASE_WAIT = "200s" }
  }

  expect_failures = [aws_lambda_function.this]
}

run "proxy_name_is_not_an_arn" {
  command = plan

  variables {
    proxy_arns = ["billing"]
  }

  expect_failures = [var.proxy_arns]
}

run "timeout_at_lambdas_limit_is_refused" {
  command = plan

  variables {
    timeout_seconds = 900
  }

  expect_failures = [var.timeout_seconds]
}

run "image_outside_ecr_is_refused" {
  command = plan

  variables {
    package_type = "Image"
    image_uri    = "ghcr.io/rds-proxy-password-rotation/rds-proxy-password-rotation:1.0.0"
  }

  expect_failures = [var.image_uri]
}

run "zip_without_path_is_refused" {
  command = plan

  variables {
    zip_path = null
  }

  expect_failures = [aws_lambda_function.this]
}

run "reserved_lambda_variable_is_refused" {
  command = plan

  variables {
    extra_environment = { AWS_REGION = "us-east-1" }
  }

  expect_failures = [var.extra_environment]
}

run "no_secrets_is_refused" {
  command = plan

  variables {
    rotations   = {}
    secret_arns = []
  }

  expect_failures = [aws_iam_role.this]
}

run "database_must_be_reachable" {
  command = plan

  variables {
    database_security_group_ids = []
  }

  expect_failures = [aws_lambda_function.this]
}
