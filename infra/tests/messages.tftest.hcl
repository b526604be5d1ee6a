# (1) Every schedule sends exactly the worker's message format (docs/src/operating/worker.md,
# "Messages"; src/message.rs): keys a subset of {secret_id, force, reason, request_id}, secret_id a non-empty
# string, force a bool, reason a string; the fan-out sends exactly {"select": {tag_key, tag_value}}.
# The mock provider never calls AWS, so `apply` is safe and makes every attribute known.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  image       = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0"
  vpc_id      = "vpc-0123456789abcdef0"
  subnet_ids  = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  secret_arns = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"]

  database_security_group_ids = ["sg-0fedcba9876543210"]

  schedules = {
    app = {
      secret_id           = "prod/app/db"
      schedule_expression = "rate(30 days)"
    }
    by-arn = {
      secret_id           = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"
      schedule_expression = "cron(0 3 ? * SUN *)"
      timezone            = "Europe/Berlin"
      force               = true
      reason              = "weekly \"forced\" <rotation> & audit, ünïcode"
    }
  }
}

run "schedules_send_the_worker_message" {
  command = apply

  assert {
    condition = alltrue([
      for s in aws_scheduler_schedule.secret :
      length(setsubtract(keys(jsondecode(s.target[0].input)), ["secret_id", "force", "reason", "request_id"])) == 0
    ])
    error_message = "A schedule's input has a key the worker does not accept (only secret_id, force, reason, request_id)."
  }

  assert {
    condition = alltrue([
      for s in aws_scheduler_schedule.secret : (
        can(length(trimspace(jsondecode(s.target[0].input).secret_id)))
        && jsondecode(s.target[0].input).secret_id == tostring(jsondecode(s.target[0].input).secret_id)
        && length(trimspace(jsondecode(s.target[0].input).secret_id)) > 0
      )
    ])
    error_message = "A schedule's secret_id is missing, not a string, or empty."
  }

  assert {
    condition = alltrue([
      for s in aws_scheduler_schedule.secret :
      jsondecode(s.target[0].input).force == true || jsondecode(s.target[0].input).force == false
    ])
    error_message = "A schedule's force is not a JSON bool."
  }

  assert {
    condition = alltrue([
      for s in aws_scheduler_schedule.secret :
      !can(jsondecode(s.target[0].input).reason) || jsondecode(s.target[0].input).reason == tostring(jsondecode(s.target[0].input).reason)
    ])
    error_message = "A schedule's reason is not a string."
  }

  # The values are the configured ones, and the text is exactly what the worker parses.
  assert {
    condition     = aws_scheduler_schedule.secret["app"].target[0].input == "{\"force\":false,\"reason\":\"scheduled\",\"secret_id\":\"prod/app/db\"}"
    error_message = "The default schedule input is not {\"force\":false,\"reason\":\"scheduled\",\"secret_id\":...}."
  }

  assert {
    condition = alltrue([
      for k, s in aws_scheduler_schedule.secret : (
        jsondecode(s.target[0].input).secret_id == var.schedules[k].secret_id
        && jsondecode(s.target[0].input).force == var.schedules[k].force
        && jsondecode(s.target[0].input).reason == var.schedules[k].reason
      )
    ])
    error_message = "A schedule's input does not carry its configured secret_id, force and reason."
  }

  # No fixed request_id: the worker would treat every later run of the schedule as a duplicate.
  assert {
    condition     = alltrue([for s in aws_scheduler_schedule.secret : !contains(keys(jsondecode(s.target[0].input)), "request_id")])
    error_message = "A schedule sends a fixed request_id; every run after the first would be skipped as a duplicate."
  }

  assert {
    condition = alltrue([
      for s in aws_scheduler_schedule.secret :
      s.target[0].arn == aws_sqs_queue.this.arn && s.target[0].role_arn == aws_iam_role.scheduler.arn
      && s.flexible_time_window[0].mode == "OFF" && s.target[0].dead_letter_config[0].arn == aws_sqs_queue.dlq.arn
    ])
    error_message = "A schedule does not target the request queue with the scheduler role, flexible window off and the DLQ."
  }

  assert {
    condition     = aws_scheduler_schedule.secret["by-arn"].schedule_expression_timezone == "Europe/Berlin" && aws_scheduler_schedule.secret["app"].schedule_expression_timezone == "UTC"
    error_message = "Schedule time zones are not passed through."
  }

  assert {
    condition     = length(aws_scheduler_schedule.fanout) == 0 && output.fanout_schedule_arn == null
    error_message = "A fan-out schedule exists although fanout_schedule is null."
  }

  assert {
    condition     = toset(keys(output.schedule_arns)) == toset(["app", "by-arn"])
    error_message = "schedule_arns does not list every schedule."
  }
}

run "fanout_sends_exactly_select" {
  command = apply

  variables {
    schedules = {}
    fanout_schedule = {
      tag_key             = "rotation"
      tag_value           = "weekly"
      schedule_expression = "rate(7 days)"
    }
  }

  assert {
    condition     = jsondecode(aws_scheduler_schedule.fanout[0].target[0].input) == { select = { tag_key = "rotation", tag_value = "weekly" } }
    error_message = "The fan-out input is not {\"select\": {\"tag_key\": \"rotation\", \"tag_value\": \"weekly\"}}."
  }

  assert {
    condition     = keys(jsondecode(aws_scheduler_schedule.fanout[0].target[0].input)) == ["select"] && keys(jsondecode(aws_scheduler_schedule.fanout[0].target[0].input).select) == ["tag_key", "tag_value"]
    error_message = "The fan-out input has keys other than select.tag_key and select.tag_value."
  }

  assert {
    condition     = aws_scheduler_schedule.fanout[0].target[0].input == "{\"select\":{\"tag_key\":\"rotation\",\"tag_value\":\"weekly\"}}"
    error_message = "The fan-out input text is not exactly the worker's select message."
  }

  assert {
    condition     = aws_scheduler_schedule.fanout[0].target[0].arn == aws_sqs_queue.this.arn && aws_scheduler_schedule.fanout[0].flexible_time_window[0].mode == "OFF"
    error_message = "The fan-out schedule does not target the request queue with the flexible window off."
  }

  assert {
    condition     = length(aws_scheduler_schedule.secret) == 0
    error_message = "Per-secret schedules exist although schedules is empty."
  }
}

run "blank_secret_id_is_refused" {
  command = plan

  variables {
    schedules = {
      bad = { secret_id = "  ", schedule_expression = "rate(30 days)" }
    }
  }

  expect_failures = [var.schedules]
}

run "control_characters_are_refused" {
  command = plan

  variables {
    schedules = {
      bad = { secret_id = "prod/app/db", schedule_expression = "rate(30 days)", reason = "two\nlines" }
    }
  }

  expect_failures = [var.schedules]
}

run "bad_schedule_expression_is_refused" {
  command = plan

  variables {
    schedules = {
      bad = { secret_id = "prod/app/db", schedule_expression = "every 30 days" }
    }
  }

  expect_failures = [var.schedules]
}

run "fanout_without_tag_key_is_refused" {
  command = plan

  variables {
    fanout_schedule = { tag_key = "", tag_value = "weekly", schedule_expression = "rate(7 days)" }
  }

  expect_failures = [var.fanout_schedule]
}
