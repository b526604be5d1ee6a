################################################################################
# Scaling to zero (var.autoscaling): Application Auto Scaling sets the service's
# desired count from the queue. Out: as soon as a request is waiting. In: to
# min_count only when nothing is waiting, in flight or delayed for
# scale_in_idle_minutes, so a task is never stopped under a running rotation
# (an in-flight message is one a worker holds: its visibility is renewed while
# the rotation runs, and a retry waits out its back-off invisible too).
#
# Application Auto Scaling uses its service-linked role for ECS
# (AWSServiceRoleForApplicationAutoScaling_ECSService), created on first use.
################################################################################

resource "aws_appautoscaling_target" "service" {
  count = local.autoscaled ? 1 : 0

  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${local.cluster_name}/${aws_ecs_service.autoscaled[0].name}"
  min_capacity       = var.autoscaling.min_count
  max_capacity       = var.autoscaling.max_count

  tags = var.tags
}

# One more task while requests wait, then five minutes for it to start and drain the queue (a
# Fargate task takes one to three minutes to start, and SQS metrics lag), so one request does not
# scale the service out to max_count; a backlog that outlasts that adds another. ChangeInCapacity,
# not ExactCapacity: a step that sets a number could also lower it, and stop a busy task.
resource "aws_appautoscaling_policy" "scale_out" {
  count = local.autoscaled ? 1 : 0

  name               = "${var.name}-scale-out"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.service[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.service[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.service[0].resource_id

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = 300
    metric_aggregation_type = "Maximum"

    step_adjustment {
      metric_interval_lower_bound = 0
      scaling_adjustment          = 1
    }
  }
}

# Straight to min_count once the queue has been idle: no intermediate steps, which would stop
# tasks while others still work.
resource "aws_appautoscaling_policy" "scale_in" {
  count = local.autoscaled ? 1 : 0

  name               = "${var.name}-scale-in"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.service[0].service_namespace
  scalable_dimension = aws_appautoscaling_target.service[0].scalable_dimension
  resource_id        = aws_appautoscaling_target.service[0].resource_id

  step_scaling_policy_configuration {
    adjustment_type         = "ExactCapacity"
    cooldown                = 60
    metric_aggregation_type = "Maximum"

    step_adjustment {
      metric_interval_upper_bound = 0
      scaling_adjustment          = var.autoscaling.min_count
    }
  }
}

# These two alarms drive the policies, not people: no alarm_actions/ok_actions of the operator.
# An alarm keeps invoking its scaling policy every minute while it stays in ALARM.
resource "aws_cloudwatch_metric_alarm" "scale_out" {
  count = local.autoscaled ? 1 : 0

  alarm_name          = "${var.name}-scale-out"
  alarm_description   = "rds-rotator: requests wait in ${aws_sqs_queue.this.name}; Application Auto Scaling adds a task (up to ${var.autoscaling.max_count})."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.this.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  # SQS stops publishing for a queue idle for hours: no data means no request.
  treat_missing_data = "notBreaching"
  alarm_actions      = [aws_appautoscaling_policy.scale_out[0].arn]
  tags               = var.tags
}

resource "aws_cloudwatch_metric_alarm" "scale_in" {
  count = local.autoscaled ? 1 : 0

  alarm_name          = "${var.name}-scale-in"
  alarm_description   = "rds-rotator: nothing waiting, in flight or delayed in ${aws_sqs_queue.this.name} for ${var.autoscaling.scale_in_idle_minutes} minutes; Application Auto Scaling sets the service to ${var.autoscaling.min_count} tasks."
  evaluation_periods  = var.autoscaling.scale_in_idle_minutes
  datapoints_to_alarm = var.autoscaling.scale_in_idle_minutes
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  # SQS reports the in-flight and delayed counts only while there are some, so a missing point of
  # those is a 0 (FILL below). A gap in all of them is no proof of an idle queue: keep the state.
  treat_missing_data = "ignore"
  alarm_actions      = [aws_appautoscaling_policy.scale_in[0].arn]
  tags               = var.tags

  metric_query {
    id          = "requests"
    expression  = "FILL(visible, 0) + FILL(in_flight, 0) + FILL(delayed, 0)"
    label       = "Requests waiting, in flight or delayed"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = {
      visible   = "ApproximateNumberOfMessagesVisible"
      in_flight = "ApproximateNumberOfMessagesNotVisible"
      delayed   = "ApproximateNumberOfMessagesDelayed"
    }
    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/SQS"
        metric_name = metric_query.value
        dimensions  = { QueueName = aws_sqs_queue.this.name }
        stat        = "Maximum"
        period      = 60
      }
    }
  }
}
