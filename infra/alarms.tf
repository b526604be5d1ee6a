################################################################################
# Alarms
################################################################################

# Anything in the DLQ needs a person: fatal rotation failures (with the reason in the message
# attribute rotator_reason), malformed messages, requests that kept failing transiently, and
# schedules that could not deliver.
resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  count = var.create_alarms ? 1 : 0

  alarm_name          = "${var.name}-dlq-not-empty"
  alarm_description   = "rds-rotator: messages in the dead-letter queue ${aws_sqs_queue.dlq.name}. Read the rotator_reason attribute and the step record (rds-rotator status)."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.ok_actions
  tags                = var.tags
}

# Failed rotations, from the worker's own metric (CloudWatch embedded metric format in its JSON
# logs: namespace var.metrics_namespace, metric RotationsFailed, no dimensions). It counts the
# failures that need a person (the request also goes to the DLQ); transient failures, which the
# worker resumes by itself, are the separate metric RotationsIncomplete.
resource "aws_cloudwatch_metric_alarm" "rotations_failed" {
  count = var.create_alarms ? 1 : 0

  alarm_name          = "${var.name}-rotations-failed"
  alarm_description   = "rds-rotator: rotations failed in the last 5 minutes (see the worker's log group ${aws_cloudwatch_log_group.this.name})."
  namespace           = var.metrics_namespace
  metric_name         = "RotationsFailed"
  dimensions          = var.rotation_failed_metric_dimensions
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

# An application still logs in as the idle user with credentials from two rotations ago: the
# in-use guard found its sessions (the rotation waits under ROTATOR_IN_USE=refuse, and goes on
# under warn). Someone has to find that application; the metric's in_use property names it.
resource "aws_cloudwatch_metric_alarm" "idle_user_in_use" {
  count = var.create_alarms ? 1 : 0

  alarm_name          = "${var.name}-idle-user-in-use"
  alarm_description   = "rds-rotator: a rotation found sessions of the idle user (an application keeps credentials longer than min_interval). See the in_use property of the worker's metric lines in ${aws_cloudwatch_log_group.this.name}, or rds-rotator check."
  namespace           = var.metrics_namespace
  metric_name         = "IdleUserSessions"
  dimensions          = var.rotation_failed_metric_dimensions
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  # Retries of a waiting rotation come up to 15 minutes apart: between them the alarm keeps its
  # state, and only a rotation that finds no session clears it.
  treat_missing_data = "ignore"
  alarm_actions      = var.alarm_actions
  ok_actions         = var.ok_actions
  tags               = var.tags
}

# Requests nobody consumes: the worker is down, cannot reach AWS, or is saturated.
resource "aws_cloudwatch_metric_alarm" "queue_stale" {
  count = var.create_alarms ? 1 : 0

  alarm_name          = "${var.name}-requests-stale"
  alarm_description   = "rds-rotator: the oldest rotation request in ${aws_sqs_queue.this.name} is older than ${var.queue_age_alarm_threshold_seconds}s."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.this.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = var.queue_age_alarm_threshold_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.ok_actions
  tags                = var.tags
}
