# Scaling to zero (var.autoscaling). Off by default: one service with desired_count, no scaling
# resources. On: the service is the one whose desired_count Terraform ignores, Application Auto
# Scaling runs it between min_count and max_count, out on waiting requests, in only when nothing
# is waiting, in flight or delayed for the idle period.

mock_provider "aws" {
  source = "./tests/mocks"
}

# Distinct policy ARNs (the alarms' actions are validated as ARNs), so that an alarm wired to the
# wrong policy fails.
override_resource {
  target = aws_appautoscaling_policy.scale_out
  values = { arn = "arn:aws:autoscaling:eu-west-1:123456789012:scalingPolicy:11111111-2222-3333-4444-555555555555:resource/ecs/service/rds-rotator/rds-rotator:policyName/rds-rotator-scale-out" }
}

override_resource {
  target = aws_appautoscaling_policy.scale_in
  values = { arn = "arn:aws:autoscaling:eu-west-1:123456789012:scalingPolicy:11111111-2222-3333-4444-555555555555:resource/ecs/service/rds-rotator/rds-rotator:policyName/rds-rotator-scale-in" }
}

variables {
  image       = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0"
  vpc_id      = "vpc-0123456789abcdef0"
  subnet_ids  = ["subnet-0123456789abcdef0"]
  secret_arns = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"]

  database_security_group_ids = ["sg-0fedcba9876543210"]
}

run "off_by_default" {
  command = apply

  assert {
    condition = (
      length(aws_ecs_service.this) == 1 && length(aws_ecs_service.autoscaled) == 0
      && aws_ecs_service.this[0].desired_count == 1 && output.service_name == "rds-rotator"
    )
    error_message = "Without autoscaling there must be exactly the desired_count service."
  }

  assert {
    condition = (
      length(aws_appautoscaling_target.service) == 0 && length(aws_appautoscaling_policy.scale_out) == 0
      && length(aws_appautoscaling_policy.scale_in) == 0 && length(aws_cloudwatch_metric_alarm.scale_out) == 0
      && length(aws_cloudwatch_metric_alarm.scale_in) == 0 && length(output.autoscaling_alarm_arns) == 0
    )
    error_message = "Scaling resources exist although autoscaling is off."
  }
}

run "scales_to_zero" {
  command = apply

  variables {
    autoscaling = { min_count = 0, max_count = 3 }
  }

  assert {
    condition = (
      length(aws_ecs_service.this) == 0 && length(aws_ecs_service.autoscaled) == 1
      && aws_ecs_service.autoscaled[0].name == "rds-rotator" && aws_ecs_service.autoscaled[0].desired_count == 0
      && output.service_name == "rds-rotator"
    )
    error_message = "With autoscaling the service must be the autoscaled one, starting at min_count."
  }

  assert {
    condition = (
      aws_appautoscaling_target.service[0].service_namespace == "ecs"
      && aws_appautoscaling_target.service[0].scalable_dimension == "ecs:service:DesiredCount"
      && aws_appautoscaling_target.service[0].resource_id == "service/rds-rotator/rds-rotator"
      && aws_appautoscaling_target.service[0].min_capacity == 0 && aws_appautoscaling_target.service[0].max_capacity == 3
    )
    error_message = "The scalable target is not the service's DesiredCount between 0 and 3."
  }

  # Out: a request waiting in the queue adds a task (a relative step, never a number that could
  # also lower the count).
  assert {
    condition = (
      aws_cloudwatch_metric_alarm.scale_out[0].namespace == "AWS/SQS"
      && aws_cloudwatch_metric_alarm.scale_out[0].metric_name == "ApproximateNumberOfMessagesVisible"
      && aws_cloudwatch_metric_alarm.scale_out[0].dimensions == tomap({ QueueName = aws_sqs_queue.this.name })
      && aws_cloudwatch_metric_alarm.scale_out[0].period == 60
      && aws_cloudwatch_metric_alarm.scale_out[0].threshold == 1
      && aws_cloudwatch_metric_alarm.scale_out[0].comparison_operator == "GreaterThanOrEqualToThreshold"
      && aws_cloudwatch_metric_alarm.scale_out[0].alarm_actions == toset([aws_appautoscaling_policy.scale_out[0].arn])
    )
    error_message = "The scale-out alarm does not fire on one visible request in the module's queue."
  }

  assert {
    condition = (
      one(aws_appautoscaling_policy.scale_out[0].step_scaling_policy_configuration).adjustment_type == "ChangeInCapacity"
      && [for s in one(aws_appautoscaling_policy.scale_out[0].step_scaling_policy_configuration).step_adjustment : s.scaling_adjustment] == [1]
      && aws_appautoscaling_policy.scale_out[0].resource_id == aws_appautoscaling_target.service[0].resource_id
    )
    error_message = "The scale-out policy does not add one task to the service."
  }

  # In: only when visible + in flight + delayed stayed 0 for 15 one-minute periods, then to min_count.
  assert {
    condition = (
      aws_cloudwatch_metric_alarm.scale_in[0].evaluation_periods == 15
      && aws_cloudwatch_metric_alarm.scale_in[0].datapoints_to_alarm == 15
      && aws_cloudwatch_metric_alarm.scale_in[0].threshold == 1
      && aws_cloudwatch_metric_alarm.scale_in[0].comparison_operator == "LessThanThreshold"
      && aws_cloudwatch_metric_alarm.scale_in[0].alarm_actions == toset([aws_appautoscaling_policy.scale_in[0].arn])
    )
    error_message = "The scale-in alarm does not wait for 15 idle minutes."
  }

  assert {
    condition = toset([
      for q in aws_cloudwatch_metric_alarm.scale_in[0].metric_query : "${one(q.metric).namespace}/${one(q.metric).metric_name}/${one(q.metric).dimensions.QueueName}/${one(q.metric).period}"
      if length(q.metric) > 0
      ]) == toset([
      "AWS/SQS/ApproximateNumberOfMessagesVisible/rds-rotator/60",
      "AWS/SQS/ApproximateNumberOfMessagesNotVisible/rds-rotator/60",
      "AWS/SQS/ApproximateNumberOfMessagesDelayed/rds-rotator/60",
    ]) && one([for q in aws_cloudwatch_metric_alarm.scale_in[0].metric_query : q if q.return_data == true]).expression == "FILL(visible, 0) + FILL(in_flight, 0) + FILL(delayed, 0)"
    error_message = "The scale-in alarm does not sum the queue's visible, in-flight and delayed requests."
  }

  assert {
    condition = (
      one(aws_appautoscaling_policy.scale_in[0].step_scaling_policy_configuration).adjustment_type == "ExactCapacity"
      && [for s in one(aws_appautoscaling_policy.scale_in[0].step_scaling_policy_configuration).step_adjustment : s.scaling_adjustment] == [0]
    )
    error_message = "The scale-in policy does not set the service to min_count."
  }

  # The Secrets Manager write quota is split over as many tasks as may run.
  assert {
    condition     = output.task_environment["ROTATOR_SM_WRITE_TPS"] == "13"
    error_message = "ROTATOR_SM_WRITE_TPS is not secretsmanager_write_tps / max_count."
  }

  assert {
    condition     = toset(keys(output.autoscaling_alarm_arns)) == toset(["scale_out", "scale_in"])
    error_message = "autoscaling_alarm_arns does not list the scaling alarms."
  }
}

# Runs of a file share their state: the service made by "scales_to_zero" is updated here, and its
# desired_count stays 0 although min_count is now 1, because Terraform ignores it (Application
# Auto Scaling owns it). The scalable target's minimum is what raises it, at AWS. (The cluster
# stays the same: another cluster would replace the service, which the mock provider does not
# show.)
run "min_count_and_idle_period_change_in_place" {
  command = apply

  variables {
    autoscaling = { min_count = 1, max_count = 2, scale_in_idle_minutes = 30 }
  }

  assert {
    condition = (
      aws_ecs_service.autoscaled[0].desired_count == 0
      && aws_appautoscaling_target.service[0].min_capacity == 1
      && aws_cloudwatch_metric_alarm.scale_in[0].evaluation_periods == 30
      && [for s in one(aws_appautoscaling_policy.scale_in[0].step_scaling_policy_configuration).step_adjustment : s.scaling_adjustment] == [1]
    )
    error_message = "desired_count must be left to Application Auto Scaling, and the service scale in to min_count after the idle period."
  }

  assert {
    condition     = one(aws_appautoscaling_policy.scale_out[0].step_scaling_policy_configuration).cooldown >= 300
    error_message = "Scaling out needs a cooldown as long as a task takes to start, or one request scales the service to max_count."
  }
}

run "an_existing_cluster_is_named_in_the_scalable_target" {
  command = plan

  variables {
    create_cluster = false
    cluster_arn    = "arn:aws:ecs:eu-west-1:123456789012:cluster/shared"
    autoscaling    = { min_count = 0, max_count = 2 }
  }

  assert {
    condition     = aws_appautoscaling_target.service[0].resource_id == "service/shared/rds-rotator"
    error_message = "The scalable target must name the given cluster."
  }
}

run "max_below_min_is_refused" {
  command = plan

  variables {
    autoscaling = { min_count = 2, max_count = 1 }
  }

  expect_failures = [var.autoscaling]
}

run "short_idle_period_is_refused" {
  command = plan

  variables {
    autoscaling = { scale_in_idle_minutes = 1 }
  }

  expect_failures = [var.autoscaling]
}
