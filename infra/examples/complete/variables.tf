variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "image" {
  description = "rds-rotator image, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database, the proxy and the worker."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (with a NAT gateway or VPC endpoints) for the proxy and the worker."
  type        = list(string)
}

variable "db_cluster_identifier" {
  description = "Aurora PostgreSQL cluster the proxy fronts."
  type        = string
}

variable "db_security_group_id" {
  description = "Security group of the database cluster."
  type        = string
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the secrets, the queues, the table, the logs and the alarm topic. Its key policy must allow Secrets Manager, SQS, DynamoDB, CloudWatch Logs, SNS and CloudWatch alarms to use it."
  type        = string
}

variable "alarm_email" {
  description = "Address subscribed to the alarm topic (confirm the subscription mail)."
  type        = string
}
