output "proxy_secret_arns" {
  description = "The RDS Proxy secrets adopt made, by database user."
  value       = { for u, s in data.aws_secretsmanager_secret.proxy : u => s.arn }
}

output "proxy_endpoint" {
  description = "Where applications connect (the application secret's host)."
  value       = aws_db_proxy.billing.endpoint
}

output "queue_url" {
  description = "Request queue: `ROTATOR_QUEUE_URL=... rds-rotator enqueue prod/billing/db` rotates now."
  value       = module.rotator.queue_url
}
