output "queue_url" {
  description = "URL of the request queue (ROTATOR_QUEUE_URL; also for `rds-rotator enqueue`)."
  value       = aws_sqs_queue.this.url
}

output "queue_arn" {
  description = "ARN of the request queue (target of schedules and EventBridge rules)."
  value       = aws_sqs_queue.this.arn
}

output "dlq_url" {
  description = "URL of the dead-letter queue."
  value       = aws_sqs_queue.dlq.url
}

output "dlq_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dlq.arn
}

output "table_name" {
  description = "DynamoDB table of leases and step records (ROTATOR_TABLE)."
  value       = aws_dynamodb_table.this.name
}

output "table_arn" {
  description = "ARN of the DynamoDB table."
  value       = aws_dynamodb_table.this.arn
}

output "task_role_arn" {
  description = "ARN of the worker's task role."
  value       = aws_iam_role.task.arn
}

output "task_role_name" {
  description = "Name of the worker's task role (to attach further policies, e.g. secretsmanager:ListSecrets for fan-out)."
  value       = aws_iam_role.task.name
}

output "task_policy_json" {
  description = "The worker's IAM policy, as attached (for review)."
  value       = aws_iam_role_policy.task.policy
}

output "execution_role_arn" {
  description = "ARN of the ECS task execution role."
  value       = aws_iam_role.execution.arn
}

output "scheduler_role_arn" {
  description = "ARN of the role EventBridge Scheduler uses to send requests."
  value       = aws_iam_role.scheduler.arn
}

output "cluster_arn" {
  description = "ARN of the ECS cluster running the worker."
  value       = local.cluster_arn
}

output "service_name" {
  description = "Name of the ECS service."
  value       = local.service_name
}

output "task_environment" {
  description = "The worker container's environment (name => value), as in the task definition, for review. It holds names, URLs and settings, never a secret value: the worker reads secrets at run time."
  value       = { for e in local.environment : e.name => e.value }
}

output "task_definition_arn" {
  description = "ARN of the task definition."
  value       = aws_ecs_task_definition.this.arn
}

output "security_group_id" {
  description = "The worker's security group: admit it in the proxy's and database's ingress rules on db_ports."
  value       = aws_security_group.this.id
}

output "log_group_name" {
  description = "CloudWatch log group of the worker."
  value       = aws_cloudwatch_log_group.this.name
}

output "schedule_group_name" {
  description = "EventBridge Scheduler group holding the schedules."
  value       = local.schedule_group
}

output "schedule_arns" {
  description = "ARNs of the per-secret schedules, by key of var.schedules."
  value       = { for k, s in aws_scheduler_schedule.secret : k => s.arn }
}

output "fanout_schedule_arn" {
  description = "ARN of the fan-out schedule, or null."
  value       = one(aws_scheduler_schedule.fanout[*].arn)
}

output "alarm_arns" {
  description = "ARNs of the alarms (empty when create_alarms is false)."
  value = var.create_alarms ? {
    dlq_not_empty    = aws_cloudwatch_metric_alarm.dlq_not_empty[0].arn
    rotations_failed = aws_cloudwatch_metric_alarm.rotations_failed[0].arn
    requests_stale   = aws_cloudwatch_metric_alarm.queue_stale[0].arn
    idle_user_in_use = aws_cloudwatch_metric_alarm.idle_user_in_use[0].arn
  } : {}
}

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard, or null when create_dashboard is false."
  value       = one(aws_cloudwatch_dashboard.this[*].dashboard_name)
}

output "autoscaling_alarm_arns" {
  description = "ARNs of the scale-out and scale-in alarms that drive Application Auto Scaling (empty without autoscaling)."
  value = local.autoscaled ? {
    scale_out = aws_cloudwatch_metric_alarm.scale_out[0].arn
    scale_in  = aws_cloudwatch_metric_alarm.scale_in[0].arn
  } : {}
}
