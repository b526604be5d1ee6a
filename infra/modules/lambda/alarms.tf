################################################################################
# Alarms and dashboard
################################################################################

# Steps that keep failing, timing out or being throttled. One failed step is routine: a step that
# waits for another process's lease, or for the idle user's sessions (RotationIncomplete), fails
# and Secrets Manager retries the rotation. Fifteen minutes of them is not; nor is a timeout or a
# crash, which writes no metric line of its own (rotations_failed below counts the rest). The
# reason is in the function's log group and in `rds-rotator status`.
resource "aws_cloudwatch_metric_alarm" "errors" {
  count = var.create_alarms ? 1 : 0

  alarm_name          = "${var.name}-errors"
  alarm_description   = "rds-rotator: the rotation function ${aws_lambda_function.this.function_name} failed, timed out or was throttled on steps in each of the last three 5-minute periods (see ${aws_cloudwatch_log_group.this.name})."
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.ok_actions
  tags                = var.tags

  metric_query {
    id          = "failed_steps"
    expression  = "FILL(errors, 0) + FILL(throttles, 0)"
    label       = "Steps that failed, timed out or were throttled"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = { errors = "Errors", throttles = "Throttles" }
    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/Lambda"
        metric_name = metric_query.value
        dimensions  = { FunctionName = aws_lambda_function.this.function_name }
        stat        = "Sum"
        period      = 300
      }
    }
  }
}

# The rotation metrics, as the root module's alarms: the function writes the same EMF lines as
# the worker (namespace var.metrics_namespace, no dimensions).
resource "aws_cloudwatch_metric_alarm" "rotations_failed" {
  count = var.create_metric_alarms ? 1 : 0

  alarm_name          = "${var.name}-rotations-failed"
  alarm_description   = "rds-rotator: rotations failed in the last 5 minutes (see ${aws_cloudwatch_log_group.this.name} and rds-rotator status)."
  namespace           = var.metrics_namespace
  metric_name         = "RotationsFailed"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.ok_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "idle_user_in_use" {
  count = var.create_metric_alarms ? 1 : 0

  alarm_name          = "${var.name}-idle-user-in-use"
  alarm_description   = "rds-rotator: a rotation found sessions of the idle user (an application keeps credentials longer than min_interval). See the in_use property of the metric lines in ${aws_cloudwatch_log_group.this.name}, or rds-rotator check."
  namespace           = var.metrics_namespace
  metric_name         = "IdleUserSessions"
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  # Secrets Manager retries a waiting rotation at its next window: keep the state in between.
  treat_missing_data = "ignore"
  alarm_actions      = var.alarm_actions
  ok_actions         = var.ok_actions
  tags               = var.tags
}

module "dashboard_body" {
  source = "../dashboard"

  region                   = local.region
  metrics_namespace        = var.metrics_namespace
  function_names           = [aws_lambda_function.this.function_name]
  function_timeout_seconds = var.timeout_seconds
}

resource "aws_cloudwatch_dashboard" "this" {
  count = var.create_dashboard ? 1 : 0

  dashboard_name = var.name
  dashboard_body = module.dashboard_body.body
}
