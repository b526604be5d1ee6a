# (3) No IAM statement grants a secretsmanager action on Resource "*", in any of the module's
# policies, whichever way the secrets are given. The policies are rendered with jsonencode from
# plain data (iam.tf), so they are the exact documents AWS receives, known at plan time and not
# mocked (a data.aws_iam_policy_document's json would be a mock value here).
#
# The same checks run in every run below; each is written out in full because a test file has no
# locals. Statement fields may be a string or a list, hence flatten([...]).

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  image      = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/rds-rotator:1.0.0"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0"]
  secret_arns = [
    "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf",
    "arn:aws:secretsmanager:eu-west-1:123456789012:secret:proxy/app-GhIjKl",
    "arn:aws:secretsmanager:eu-west-1:123456789012:secret:proxy/app_clone-MnOpQr",
  ]

  database_security_group_ids = ["sg-0fedcba9876543210"]
}

run "secrets_by_arn" {
  command = apply

  assert {
    condition = alltrue(flatten([
      for p in [aws_iam_role_policy.task.policy, aws_iam_role_policy.execution.policy, aws_iam_role_policy.scheduler.policy] : [
        for s in jsondecode(p).Statement :
        !(anytrue([for a in flatten([s.Action]) : startswith(lower(a), "secretsmanager:") || a == "*"]) && contains(flatten([try(s.Resource, [])]), "*"))
      ]
    ]))
    error_message = "A policy grants a secretsmanager action on Resource \"*\"."
  }

  assert {
    condition = alltrue(flatten([
      for p in [aws_iam_role_policy.task.policy, aws_iam_role_policy.execution.policy, aws_iam_role_policy.scheduler.policy] : [
        for s in jsondecode(p).Statement : !can(s.NotResource) && !can(s.NotAction) && s.Effect == "Allow"
      ]
    ]))
    error_message = "A policy uses NotResource/NotAction (which would widen a grant) or is not a plain Allow."
  }

  assert {
    condition = alltrue(flatten([
      for p in [aws_iam_role_policy.task.policy, aws_iam_role_policy.execution.policy, aws_iam_role_policy.scheduler.policy] : [
        for s in jsondecode(p).Statement : [for a in flatten([s.Action]) : !strcontains(a, "*")]
      ]
    ]))
    error_message = "A policy uses a wildcard action."
  }

  # The secrets statement names exactly the given secrets, and grants exactly the four actions.
  assert {
    condition = toset(flatten([
      for s in jsondecode(aws_iam_role_policy.task.policy).Statement : flatten([s.Resource])
      if anytrue([for a in flatten([s.Action]) : startswith(a, "secretsmanager:")])
    ])) == toset(var.secret_arns)
    error_message = "The secretsmanager statements do not name exactly secret_arns."
  }

  assert {
    condition = toset(flatten([
      for s in jsondecode(aws_iam_role_policy.task.policy).Statement : [for a in flatten([s.Action]) : a if startswith(a, "secretsmanager:")]
      ])) == toset([
      "secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage",
    ])
    error_message = "The worker's secretsmanager actions are not exactly DescribeSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage."
  }

  # DynamoDB and SQS: only the module's table and queues, only the worker's actions.
  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.task.policy).Statement : s if s.Sid == "LeaseTable"]) == {
      Sid = "LeaseTable", Effect = "Allow", Action = ["dynamodb:GetItem", "dynamodb:UpdateItem"], Resource = [aws_dynamodb_table.this.arn]
    }
    error_message = "The table statement is not GetItem/UpdateItem on the module's table."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.task.policy).Statement :
      alltrue([for r in flatten([s.Resource]) : contains([aws_sqs_queue.this.arn, aws_sqs_queue.dlq.arn], r)])
      if anytrue([for a in flatten([s.Action]) : startswith(a, "sqs:")])
    ])
    error_message = "An SQS statement names something other than the module's queues."
  }

  assert {
    condition     = output.task_policy_json == aws_iam_role_policy.task.policy
    error_message = "task_policy_json is not the attached policy."
  }

  # Execution role: the image's ECR repository only, and the module's log group.
  assert {
    condition = contains(flatten([
      for s in jsondecode(aws_iam_role_policy.execution.policy).Statement : flatten([s.Resource]) if s.Sid == "EcrPull"
    ]), "arn:aws:ecr:eu-west-1:123456789012:repository/team/rds-rotator")
    error_message = "The execution role may not pull from the image's ECR repository, or may pull from others."
  }

  # Trust: ECS tasks of this account; Scheduler only for the module's schedule group (its
  # confused-deputy guidance requires the group's ARN, not a schedule's).
  assert {
    condition = jsondecode(aws_iam_role.scheduler.assume_role_policy).Statement[0].Condition == {
      StringEquals = { "aws:SourceAccount" = "123456789012" }
      ArnEquals    = { "aws:SourceArn" = "arn:aws:scheduler:eu-west-1:123456789012:schedule-group/rds-rotator" }
    }
    error_message = "The scheduler role's trust is not limited to this account's schedule group."
  }

  assert {
    condition = jsondecode(aws_iam_role.task.assume_role_policy).Statement == [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = "123456789012" }
        ArnLike      = { "aws:SourceArn" = "arn:aws:ecs:eu-west-1:123456789012:*" }
      }
    }]
    error_message = "The task role's trust is not limited to ECS tasks of this account."
  }

  assert {
    condition     = [for st in jsondecode(aws_iam_role.execution.assume_role_policy).Statement : st.Principal] == [{ Service = "ecs-tasks.amazonaws.com" }]
    error_message = "The execution role must be assumable by ecs-tasks.amazonaws.com only."
  }

  # Scheduler role: SendMessage on the module's queues only.
  assert {
    condition = jsondecode(aws_iam_role_policy.scheduler.policy).Statement == [{
      Sid = "SendRequests", Effect = "Allow", Action = ["sqs:SendMessage"], Resource = [aws_sqs_queue.this.arn, aws_sqs_queue.dlq.arn]
    }]
    error_message = "The scheduler role may do more than send to the module's queues."
  }
}

run "secrets_by_tag_with_fanout_and_cmks" {
  command = apply

  variables {
    secret_arns          = []
    secret_tag_key       = "rds-rotator"
    secret_tag_value     = "managed"
    secrets_kms_key_arns = ["arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"]
    kms_key_arn          = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000"
    image                = "ghcr.io/example/rds-rotator:1.0.0"
    fanout_schedule = {
      tag_key             = "rds-rotator"
      tag_value           = "managed"
      schedule_expression = "rate(30 days)"
    }
  }

  assert {
    condition = alltrue(flatten([
      for p in [aws_iam_role_policy.task.policy, aws_iam_role_policy.execution.policy, aws_iam_role_policy.scheduler.policy] : [
        for s in jsondecode(p).Statement :
        !(anytrue([for a in flatten([s.Action]) : startswith(lower(a), "secretsmanager:") || a == "*"]) && contains(flatten([try(s.Resource, [])]), "*"))
      ]
    ]))
    error_message = "A policy grants a secretsmanager action on Resource \"*\" (tag-scoped / fan-out configuration)."
  }

  assert {
    condition = alltrue(flatten([
      for p in [aws_iam_role_policy.task.policy, aws_iam_role_policy.execution.policy, aws_iam_role_policy.scheduler.policy] : [
        for s in jsondecode(p).Statement : !can(s.NotResource) && !can(s.NotAction) && s.Effect == "Allow"
      ]
    ]))
    error_message = "A policy uses NotResource/NotAction or is not a plain Allow."
  }

  # The tag-scoped grant: this account's and region's secrets, only with the tag.
  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.task.policy).Statement : s if s.Sid == "ManagedSecretsByTag"]).Resource == [
      "arn:aws:secretsmanager:eu-west-1:123456789012:secret:*"
    ]
    error_message = "The tag-scoped statement is not limited to this account's and region's secrets."
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.task.policy).Statement : s if s.Sid == "ManagedSecretsByTag"]).Condition == {
      StringEquals = { "aws:ResourceTag/rds-rotator" = ["managed"] }
    }
    error_message = "The tag-scoped statement lacks its aws:ResourceTag condition."
  }

  # Every statement with a secretsmanager action is either ARN-scoped or carries the tag condition.
  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.task.policy).Statement :
      can(s.Condition.StringEquals["aws:ResourceTag/rds-rotator"]) || alltrue([for r in flatten([s.Resource]) : !strcontains(r, "*")])
      if anytrue([for a in flatten([s.Action]) : startswith(a, "secretsmanager:")])
    ])
    error_message = "A secretsmanager statement has a wildcard resource without the tag condition."
  }

  # ListSecrets (fan-out) only works on Resource "*", so the module does not grant it at all.
  assert {
    condition = !contains(flatten([
      for s in jsondecode(aws_iam_role_policy.task.policy).Statement : flatten([s.Action])
    ]), "secretsmanager:ListSecrets")
    error_message = "The module grants secretsmanager:ListSecrets, which IAM evaluates only against Resource \"*\"."
  }

  # KMS: only through Secrets Manager for the secrets' keys; through SQS/DynamoDB for the module's key.
  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.task.policy).Statement : s if s.Sid == "ManagedSecretsKms"]).Condition == {
      StringEquals = { "kms:ViaService" = ["secretsmanager.eu-west-1.amazonaws.com"] }
    }
    error_message = "The secrets' KMS keys are not limited to use through Secrets Manager."
  }

  assert {
    condition     = length([for s in jsondecode(aws_iam_role_policy.scheduler.policy).Statement : s if s.Sid == "QueueKms"]) == 1
    error_message = "With a queue CMK the scheduler role cannot encrypt its messages."
  }

  # An image outside ECR: no ECR permissions at all.
  assert {
    condition = !anytrue(flatten([
      for s in jsondecode(aws_iam_role_policy.execution.policy).Statement : [for a in flatten([s.Action]) : startswith(a, "ecr:")]
    ]))
    error_message = "The execution role has ECR permissions although the image is not in ECR."
  }
}

run "both_arns_and_tag" {
  command = apply

  variables {
    secret_tag_key   = "rds-rotator"
    secret_tag_value = "managed"
  }

  assert {
    condition = alltrue(flatten([
      for p in [aws_iam_role_policy.task.policy, aws_iam_role_policy.execution.policy, aws_iam_role_policy.scheduler.policy] : [
        for s in jsondecode(p).Statement :
        !(anytrue([for a in flatten([s.Action]) : startswith(lower(a), "secretsmanager:") || a == "*"]) && contains(flatten([try(s.Resource, [])]), "*"))
      ]
    ]))
    error_message = "A policy grants a secretsmanager action on Resource \"*\" (ARNs and tag)."
  }

  assert {
    condition     = toset([for s in jsondecode(aws_iam_role_policy.task.policy).Statement : s.Sid if startswith(s.Sid, "ManagedSecrets")]) == toset(["ManagedSecretsByArn", "ManagedSecretsByTag"])
    error_message = "With both secret_arns and a tag, both grants must be present."
  }
}

run "bare_star_secret_is_refused" {
  command = plan

  variables {
    secret_arns = ["*"]
  }

  expect_failures = [var.secret_arns]
}

run "all_secrets_pattern_is_refused" {
  command = plan

  variables {
    secret_arns = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:*"]
  }

  expect_failures = [var.secret_arns]
}

run "no_secrets_is_refused" {
  command = plan

  variables {
    secret_arns = []
  }

  expect_failures = [aws_iam_role.task]
}

run "tag_key_without_value_is_refused" {
  command = plan

  variables {
    secret_arns    = []
    secret_tag_key = "rds-rotator"
  }

  expect_failures = [aws_iam_role.task]
}

# Result events: PutEvents on the one bus given, by name (made an ARN) or by ARN; nothing without it.
run "result_events_bus" {
  command = apply

  variables {
    event_bus_name = "ops-events"
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.task.policy).Statement : s if s.Sid == "ResultEvents"]) == {
      Sid      = "ResultEvents"
      Effect   = "Allow"
      Action   = ["events:PutEvents"]
      Resource = ["arn:aws:events:eu-west-1:123456789012:event-bus/ops-events"]
    }
    error_message = "The task may not PutEvents on exactly the given bus."
  }

  assert {
    condition     = contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "ROTATOR_EVENT_BUS", value = "ops-events" })
    error_message = "The worker is not told the bus (ROTATOR_EVENT_BUS)."
  }
}

run "no_bus_no_events_permission" {
  command = apply

  assert {
    condition     = length([for s in jsondecode(aws_iam_role_policy.task.policy).Statement : s if anytrue([for a in flatten([s.Action]) : startswith(a, "events:")])]) == 0
    error_message = "The task may put events although no bus is configured."
  }
}
