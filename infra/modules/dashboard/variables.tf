variable "region" {
  description = "Region of every metric on the dashboard (the deployment's)."
  type        = string
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the worker's own metrics (ROTATOR_METRICS_NAMESPACE)."
  type        = string
}

variable "queue_name" {
  description = "Name of the request queue; null for a deployment without a queue (the Secrets Manager rotation function), which then has no queue widgets."
  type        = string
  default     = null
}

variable "dlq_name" {
  description = "Name of the dead-letter queue; set together with queue_name."
  type        = string
  default     = null
}

variable "function_names" {
  description = "Names of this tool's Secrets Manager rotation functions, for a row of AWS/Lambda widgets; empty: no such row."
  type        = list(string)
  default     = []
}

variable "function_timeout_seconds" {
  description = "The functions' timeout, drawn as a line on their duration widget; null draws none."
  type        = number
  default     = null
}
