output "function_arn" {
  description = "ARN of the rotation function: give it to the queue deployment (rotation_function_arns), so its worker rotates these secrets too instead of refusing them."
  value       = aws_lambda_function.this.arn
}

output "function_name" {
  description = "Name of the rotation function."
  value       = aws_lambda_function.this.function_name
}

output "role_arn" {
  description = "ARN of the function's execution role."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the function's execution role (to attach further policies)."
  value       = aws_iam_role.this.name
}

output "policy_json" {
  description = "The function's IAM policy, as attached (for review)."
  value       = aws_iam_role_policy.this.policy
}

output "environment" {
  description = "The function's environment (name => value), for review. It holds names and settings, never a secret value."
  value       = local.environment
}

output "security_group_id" {
  description = "The function's security group: admit it in the proxy's and database's ingress rules on db_ports."
  value       = aws_security_group.this.id
}

output "log_group_name" {
  description = "CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.this.name
}

output "table_name" {
  description = "DynamoDB table of leases and step records (ROTATOR_TABLE)."
  value       = local.table_name
}

output "table_arn" {
  description = "ARN of the DynamoDB table."
  value       = local.table_arn
}

output "rotation_secret_arns" {
  description = "The secrets whose Secrets Manager rotation is attached to the function, by key of var.rotations."
  value       = { for k, r in aws_secretsmanager_secret_rotation.this : k => r.secret_id }
}

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard, or null when create_dashboard is false."
  value       = one(aws_cloudwatch_dashboard.this[*].dashboard_name)
}

output "alarm_arns" {
  description = "ARNs of the alarms (errors with create_alarms; rotations_failed and idle_user_in_use with create_metric_alarms)."
  value = merge(
    var.create_alarms ? { errors = aws_cloudwatch_metric_alarm.errors[0].arn } : {},
    var.create_metric_alarms ? {
      rotations_failed = aws_cloudwatch_metric_alarm.rotations_failed[0].arn
      idle_user_in_use = aws_cloudwatch_metric_alarm.idle_user_in_use[0].arn
    } : {},
  )
}
