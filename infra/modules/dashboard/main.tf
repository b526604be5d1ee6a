################################################################################
# The CloudWatch dashboard's body, shared by the queue deployment (the root
# module) and the Secrets Manager rotation function (modules/lambda): both write
# the same metrics, in one namespace and without dimensions (src/metrics.rs).
# No resource here: each caller owns its aws_cloudwatch_dashboard.
#
# Layout (24 columns; README "Dashboard"):
#   y=0   Rotations (12)                  | Rotation duration p50/p99 (12)
#   y=6   Retries (8) | In-use deferrals (8) | Step latency p99 (8)
#   y=12  queue only: DLQ depth (8) | Oldest request age (8) | Requests visible/in flight (8)
#   next  functions only: Invocations/errors/throttles (12) | Function duration (12)
################################################################################

locals {
  # What the worker emits, kept beside src/metrics.rs: a Rust test fails when the two differ, and
  # the output's precondition below fails when a widget names a metric that is not in it.
  worker_metrics = jsondecode(file("${path.module}/../../worker-metrics.json"))
  ns             = var.metrics_namespace
  steps          = ["create_pending", "set_password", "update_proxy", "test", "finish"]
  has_queue      = var.queue_name != null

  worker_widgets = [
    {
      type = "metric", x = 0, y = 0, width = 12, height = 6
      properties = {
        title = "Rotations", region = var.region, view = "timeSeries", stacked = false, period = 300, stat = "Sum"
        metrics = [
          [local.ns, "RotationsSucceeded", { label = "succeeded", color = "#2ca02c" }],
          [local.ns, "RotationsFailed", { label = "failed (needs a person)", color = "#d62728" }],
          [local.ns, "RotationsIncomplete", { label = "incomplete (resumes by itself)", color = "#ff7f0e" }],
          [local.ns, "RotationsSkipped", { label = "skipped (duplicate or within min_interval)", color = "#7f7f7f" }],
          [local.ns, "RotationsAborted", { label = "aborted (rds-rotator abort)", color = "#9467bd" }],
        ]
        yAxis = { left = { min = 0, showUnits = false } }
      }
    },
    {
      type = "metric", x = 12, y = 0, width = 12, height = 6
      properties = {
        title = "Rotation duration", region = var.region, view = "timeSeries", stacked = false, period = 300
        metrics = [
          [local.ns, "RotationDuration", { stat = "p50", label = "p50" }],
          [local.ns, "RotationDuration", { stat = "p99", label = "p99" }],
        ]
        yAxis = { left = { min = 0 } }
      }
    },
    {
      type = "metric", x = 0, y = 6, width = 8, height = 6
      properties = {
        title = "Retries", region = var.region, view = "timeSeries", stacked = false, period = 300, stat = "Sum"
        metrics = [
          [local.ns, "Retries", { label = "retries (whole rotation and test-step probes)" }],
        ]
        yAxis = { left = { min = 0, showUnits = false } }
      }
    },
    {
      type = "metric", x = 8, y = 6, width = 8, height = 6
      properties = {
        title = "In-use deferrals", region = var.region, view = "timeSeries", stacked = false, period = 300
        metrics = [
          [local.ns, "RotationsDeferred", { stat = "Sum", label = "rotations waiting for the idle user's sessions" }],
          [local.ns, "IdleUserSessions", { stat = "Maximum", label = "idle user's sessions (max)", yAxis = "right" }],
        ]
        yAxis = { left = { min = 0, showUnits = false }, right = { min = 0, showUnits = false } }
      }
    },
    {
      type = "metric", x = 16, y = 6, width = 8, height = 6
      properties = {
        title   = "Step latency p99", region = var.region, view = "timeSeries", stacked = false, period = 300, stat = "p99"
        metrics = [for s in local.steps : [local.ns, "StepLatency", local.worker_metrics.step_dimension, s, { label = s }]]
        yAxis   = { left = { min = 0 } }
      }
    },
  ]

  # AWS/SQS: the queue's and the DLQ's own metrics, at SQS's 1-minute granularity.
  queue_widgets = flatten([
    for q in(local.has_queue ? [{ queue = var.queue_name, dlq = var.dlq_name }] : []) : [
      {
        type = "metric", x = 0, y = 12, width = 8, height = 6
        properties = {
          title = "Dead-letter queue depth", region = var.region, view = "timeSeries", stacked = false, period = 60, stat = "Maximum"
          metrics = [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q.dlq, { label = "${q.dlq}: messages", color = "#d62728" }],
          ]
          yAxis = { left = { min = 0, showUnits = false } }
        }
      },
      {
        type = "metric", x = 8, y = 12, width = 8, height = 6
        properties = {
          title = "Oldest request age", region = var.region, view = "timeSeries", stacked = false, period = 60, stat = "Maximum"
          metrics = [
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", q.queue, { label = "${q.queue}: oldest request" }],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", q.dlq, { label = "${q.dlq}: oldest dead letter" }],
          ]
          yAxis = { left = { min = 0 } }
        }
      },
      {
        type = "metric", x = 16, y = 12, width = 8, height = 6
        properties = {
          title = "Requests visible / in flight", region = var.region, view = "timeSeries", stacked = true, period = 60, stat = "Maximum"
          metrics = [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q.queue, { label = "waiting" }],
            ["AWS/SQS", "ApproximateNumberOfMessagesNotVisible", "QueueName", q.queue, { label = "in flight or backing off" }],
            ["AWS/SQS", "ApproximateNumberOfMessagesDelayed", "QueueName", q.queue, { label = "delayed" }],
          ]
          yAxis = { left = { min = 0, showUnits = false } }
        }
      },
    ]
  ])

  # AWS/Lambda: Secrets Manager invokes the function once per step (four per rotation).
  function_y = local.has_queue ? 18 : 12
  function_widgets = flatten([
    for names in(length(var.function_names) > 0 ? [var.function_names] : []) : [
      {
        type = "metric", x = 0, y = local.function_y, width = 12, height = 6
        properties = {
          title = "Rotation function: invocations, errors, throttles", region = var.region, view = "timeSeries", stacked = false, period = 300, stat = "Sum"
          metrics = concat(
            [for f in names : ["AWS/Lambda", "Invocations", "FunctionName", f, { label = "${f}: invocations (steps)" }]],
            [for f in names : ["AWS/Lambda", "Errors", "FunctionName", f, { label = "${f}: errors (incl. timeouts)", color = "#d62728" }]],
            [for f in names : ["AWS/Lambda", "Throttles", "FunctionName", f, { label = "${f}: throttles" }]],
          )
          yAxis = { left = { min = 0, showUnits = false } }
        }
      },
      {
        type = "metric", x = 12, y = local.function_y, width = 12, height = 6
        properties = {
          title = "Rotation function: step duration", region = var.region, view = "timeSeries", stacked = false, period = 300
          metrics = concat(
            [for f in names : ["AWS/Lambda", "Duration", "FunctionName", f, { stat = "p99", label = "${f}: p99" }]],
            [for f in names : ["AWS/Lambda", "Duration", "FunctionName", f, { stat = "Maximum", label = "${f}: max" }]],
          )
          yAxis = { left = { min = 0 } }
          annotations = {
            horizontal = [for t in(var.function_timeout_seconds == null ? [] : [var.function_timeout_seconds]) : { label = "timeout", value = t * 1000 }]
          }
        }
      },
    ]
  ])

  widgets = concat(local.worker_widgets, local.queue_widgets, local.function_widgets)

  # Every [namespace, name, dimension pairs..., options] entry, for the precondition below.
  metric_entries = concat([for w in local.widgets : w.properties.metrics]...)
  own_metrics    = [for m in local.metric_entries : m[1] if m[0] == local.ns]
}
