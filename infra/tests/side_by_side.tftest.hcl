# Both deployments side by side (examples/lambda): the queue worker, scaling to zero, and the
# Secrets Manager rotation function (modules/lambda) on the same lease table. The worker is told
# the function's ARN (ROTATOR_ROTATION_FUNCTION_ARNS), so the secrets whose rotation is attached to
# it are not refused; the function uses the worker's table; one dashboard shows both.

mock_provider "aws" {
  source = "./tests/mocks"
}

# The adopted secrets the example looks up, with realistic ARNs (the modules validate them).
override_data {
  target = data.aws_secretsmanager_secret.app
  values = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/shop/app-AbCdEf" }
}

override_data {
  target = data.aws_secretsmanager_secret.proxy
  values = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/shop/app/proxy/user-GhIjKl" }
}

# The queue module's queues and scaling policies, as tests/mocks gives them to the module itself
# (their ARNs are validated where schedules and alarms use them).
override_resource {
  target = module.rotator.aws_sqs_queue.this
  values = {
    arn = "arn:aws:sqs:eu-west-1:123456789012:rds-rotator"
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/rds-rotator"
  }
}

override_resource {
  target = module.rotator.aws_sqs_queue.dlq
  values = {
    arn = "arn:aws:sqs:eu-west-1:123456789012:rds-rotator-dlq"
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/rds-rotator-dlq"
  }
}

override_resource {
  target = module.rotator.aws_appautoscaling_policy.scale_out
  values = { arn = "arn:aws:autoscaling:eu-west-1:123456789012:scalingPolicy:11111111-2222-3333-4444-555555555555:resource/ecs/service/rds-rotator/rds-rotator:policyName/rds-rotator-scale-out" }
}

override_resource {
  target = module.rotator.aws_appautoscaling_policy.scale_in
  values = { arn = "arn:aws:autoscaling:eu-west-1:123456789012:scalingPolicy:11111111-2222-3333-4444-555555555555:resource/ecs/service/rds-rotator/rds-rotator:policyName/rds-rotator-scale-in" }
}

variables {
  image                   = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0"
  vpc_id                  = "vpc-0123456789abcdef0"
  private_subnet_ids      = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  proxy_security_group_id = "sg-0aaaaaaaaaaaaaaaa"
  db_security_group_id    = "sg-0bbbbbbbbbbbbbbbb"
  kms_key_arn             = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  alarm_topic_arn         = "arn:aws:sns:eu-west-1:123456789012:oncall"
}

run "queue_and_function_share_the_table" {
  command = apply

  module {
    source = "./examples/lambda"
  }

  assert {
    condition     = output.worker_environment["ROTATOR_ROTATION_FUNCTION_ARNS"] == output.rotation_function_arn
    error_message = "The ECS worker is not given the rotation function's ARN in ROTATOR_ROTATION_FUNCTION_ARNS."
  }

  assert {
    condition     = output.function_environment["ROTATOR_TABLE"] == output.table_name && output.worker_environment["ROTATOR_TABLE"] == output.table_name
    error_message = "The worker and the function do not use the same lease table."
  }

  assert {
    condition     = !contains(keys(output.function_environment), "ROTATOR_QUEUE_URL") && contains(keys(output.worker_environment), "ROTATOR_QUEUE_URL")
    error_message = "Only the worker has a queue."
  }

  assert {
    condition     = output.dashboard_name == "rds-rotator"
    error_message = "The queue deployment's dashboard is missing."
  }
}
