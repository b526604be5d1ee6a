output "body" {
  description = "The dashboard body (JSON) for aws_cloudwatch_dashboard."
  value       = jsonencode({ widgets = local.widgets })

  precondition {
    condition = alltrue([
      for m in local.own_metrics : contains(concat(local.worker_metrics.metrics, local.worker_metrics.step_metrics), m)
    ])
    error_message = "A dashboard widget names a metric in the worker's namespace that is not in worker-metrics.json (what src/metrics.rs emits)."
  }

  precondition {
    condition     = (var.dlq_name == null) == (var.queue_name == null)
    error_message = "Set queue_name and dlq_name together, or neither."
  }
}

output "widgets" {
  description = "The widgets, as data (for tests)."
  value       = local.widgets
}
