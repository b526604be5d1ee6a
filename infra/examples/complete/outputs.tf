output "app_secret_arn" {
  description = "The application's secret (rotated)."
  value       = aws_secretsmanager_secret.app.arn
}

output "proxy_secret_arns" {
  description = "The RDS Proxy secrets, by database user."
  value       = { for k, s in aws_secretsmanager_secret.proxy : k => s.arn }
}

output "proxy_endpoint" {
  description = "Where the shop connects (database_host in the app secret)."
  value       = aws_db_proxy.shop.endpoint
}

output "queue_url" {
  description = "Request queue: `ROTATOR_QUEUE_URL=... rds-rotator enqueue prod/shop/app` rotates now."
  value       = module.rotator.queue_url
}

output "dlq_url" {
  description = "Dead-letter queue."
  value       = module.rotator.dlq_url
}

output "schedule_arns" {
  description = "The schedules."
  value       = module.rotator.schedule_arns
}

output "task_role_arn" {
  description = "The worker's role."
  value       = module.rotator.task_role_arn
}
