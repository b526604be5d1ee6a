################################################################################
# EventBridge Scheduler: rotation requests on a schedule, straight to the queue.
# The target input is the worker's message (local.schedule_inputs / local.fanout_input).
################################################################################

resource "aws_scheduler_schedule_group" "this" {
  count = var.create_schedule_group ? 1 : 0

  name = var.name
  tags = var.tags
}

resource "aws_scheduler_schedule" "secret" {
  for_each = var.schedules

  name                         = "${var.name}-${each.key}"
  group_name                   = local.schedule_group
  description                  = coalesce(each.value.description, "Rotate ${each.value.secret_id}")
  schedule_expression          = each.value.schedule_expression
  schedule_expression_timezone = each.value.timezone
  state                        = each.value.enabled ? "ENABLED" : "DISABLED"
  kms_key_arn                  = var.kms_key_arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_sqs_queue.this.arn
    role_arn = aws_iam_role.scheduler.arn
    input    = local.schedule_inputs[each.key]

    # A request that cannot be delivered is kept in the DLQ (and raises its alarm).
    dead_letter_config {
      arn = aws_sqs_queue.dlq.arn
    }
  }
}

resource "aws_scheduler_schedule" "fanout" {
  count = var.fanout_schedule == null ? 0 : 1

  name                         = "${var.name}-fanout"
  group_name                   = local.schedule_group
  description                  = "Rotate every secret tagged ${var.fanout_schedule.tag_key}=${var.fanout_schedule.tag_value}"
  schedule_expression          = var.fanout_schedule.schedule_expression
  schedule_expression_timezone = var.fanout_schedule.timezone
  state                        = var.fanout_schedule.enabled ? "ENABLED" : "DISABLED"
  kms_key_arn                  = var.kms_key_arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_sqs_queue.this.arn
    role_arn = aws_iam_role.scheduler.arn
    input    = local.fanout_input

    dead_letter_config {
      arn = aws_sqs_queue.dlq.arn
    }
  }
}
