variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "image" {
  description = "rds-rotator image, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0."
  type        = string
}

variable "app_secret_name" {
  description = "The application's secret, adopted (`rds-rotator adopt <name> ...`)."
  type        = string
  default     = "prod/billing/db"
}

variable "app_user" {
  description = "The database user the application used before adoption (the secret's username then)."
  type        = string
  default     = "billing"
}

variable "clone_suffix" {
  description = "adopt's --clone-suffix: the second user is app_user with this suffix."
  type        = string
  default     = "_clone"
}

variable "master_secret_arn" {
  description = "The master secret given to adopt (--master-secret)."
  type        = string
}

variable "engine_family" {
  description = "RDS Proxy engine family: POSTGRESQL or MYSQL (MySQL and MariaDB)."
  type        = string
  default     = "POSTGRESQL"
}

variable "db_instance_identifier" {
  description = "The RDS instance behind the proxy."
  type        = string
}

variable "db_port" {
  description = "The database's port."
  type        = number
  default     = 5432
}

variable "vpc_id" {
  description = "VPC of the database, the proxy and the worker."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (with a NAT gateway or VPC endpoints) for the proxy and the worker."
  type        = list(string)
}

variable "proxy_security_group_id" {
  description = "Security group of the proxy; it must admit the worker on db_port (the test step logs in through the proxy)."
  type        = string
}

variable "db_security_group_id" {
  description = "Security group of the database; it must admit the proxy and the worker on db_port."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the application secret (adopt gave the proxy secrets the same one), also used for the module's queues, table and logs."
  type        = string
}
