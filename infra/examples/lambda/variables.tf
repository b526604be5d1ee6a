variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "image" {
  description = "rds-rotator image in ECR, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0: the ECS worker runs it with its CMD worker, the function with the command lambda."
  type        = string
}

variable "app_secret_name" {
  description = "The application's secret, adopted (`rds-rotator adopt`): its RDS Proxy secrets are <name>/proxy/<user>."
  type        = string
  default     = "prod/shop/app"
}

variable "users" {
  description = "The two database users that take turns (adopt's user and its clone)."
  type        = list(string)
  default     = ["shop", "shop_clone"]
}

variable "vpc_id" {
  description = "VPC of the database, the proxy, the worker and the function."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (with a NAT gateway or VPC endpoints) for the worker and the function."
  type        = list(string)
}

variable "proxy_security_group_id" {
  description = "Security group of the RDS Proxy: the test step logs in through it."
  type        = string
}

variable "db_security_group_id" {
  description = "Security group of the database (ALTER ROLE goes there directly with direct_host)."
  type        = string
}

variable "db_port" {
  description = "The database's and the proxy's port."
  type        = number
  default     = 5432
}

variable "kms_key_arn" {
  description = "KMS key of the secrets, also used for the module's queues, table and logs and the function's environment."
  type        = string
}

variable "alarm_topic_arn" {
  description = "SNS topic for the alarms."
  type        = string
}
