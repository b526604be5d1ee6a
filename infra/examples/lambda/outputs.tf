output "rotation_function_arn" {
  description = "The Secrets Manager rotation function."
  value       = module.rotation_function.function_arn
}

output "queue_url" {
  description = "Request queue: `ROTATOR_QUEUE_URL=... rds-rotator enqueue prod/shop/app` rotates through the worker."
  value       = module.rotator.queue_url
}

output "table_name" {
  description = "The lease table both deployments use (ROTATOR_TABLE for rds-rotator status)."
  value       = module.rotator.table_name
}

output "worker_environment" {
  description = "The worker's environment, for review: ROTATOR_ROTATION_FUNCTION_ARNS names the function."
  value       = module.rotator.task_environment
}

output "function_environment" {
  description = "The function's environment, for review: ROTATOR_TABLE is the worker's table."
  value       = module.rotation_function.environment
}

output "dashboard_name" {
  description = "The dashboard of both deployments."
  value       = module.rotator.dashboard_name
}
