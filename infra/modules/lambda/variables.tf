################################################################################
# General
################################################################################

variable "name" {
  description = "Name of the function, and prefix of every resource name: the role and the security group are NAME, the log group /aws/lambda/NAME, the alarms NAME-..., the dashboard NAME."
  type        = string
  default     = "rds-rotator-lambda"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,47}$", var.name))
    error_message = "name must start with a letter and contain only letters, digits and '-' (at most 48 characters), so that every derived name stays within AWS limits."
  }
}

variable "tags" {
  description = "Tags for every resource the module creates."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the module's own resources: the log group, the function's environment variables (at rest) and the DynamoDB table when the module creates it; with a shared table (create_table = false), the key of that table, so the function may use it through DynamoDB. null uses AWS-managed encryption. The key policy must let CloudWatch Logs (logs.REGION.amazonaws.com) and DynamoDB use it, and whoever applies must be allowed kms:CreateGrant on it (Lambda takes a grant for the environment)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null ? true : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

################################################################################
# The function
################################################################################

variable "package_type" {
  description = "How the binary is packaged: Zip (provided.al2023, a zip whose `bootstrap` script execs `rds-rotator lambda` beside it; see zip_path) or Image (the rds-rotator container image from ECR, run with the command [\"lambda\"]; see image_uri)."
  type        = string
  default     = "Zip"

  validation {
    condition     = contains(["Zip", "Image"], var.package_type)
    error_message = "package_type must be Zip or Image."
  }
}

variable "zip_path" {
  description = "For package_type Zip: path of the deployment package, as CI builds it at target/lambda/rds-rotator-lambda.zip (`bootstrap` and `rds-rotator` at the top level). Relative paths are relative to where terraform runs; use path.root to be independent of it. Its hash decides when the code is updated."
  type        = string
  default     = null

  validation {
    condition     = var.zip_path == null ? true : endswith(var.zip_path, ".zip")
    error_message = "zip_path must name a .zip file."
  }
}

variable "image_uri" {
  description = "For package_type Image: the rds-rotator image in a private ECR repository (Lambda runs no other registry's), e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.2.3 or an @sha256 digest. The image's ENTRYPOINT rds-rotator stays; the command becomes [\"lambda\"]. The repository policy must let lambda.amazonaws.com pull (Lambda adds that itself when whoever applies may set it)."
  type        = string
  default     = null

  validation {
    condition     = var.image_uri == null ? true : can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/[^:@]+(:[^:@]+|@sha256:[0-9a-f]{64})$", var.image_uri))
    error_message = "image_uri must be an ECR image (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG or @sha256:DIGEST): Lambda runs images from ECR only."
  }
}

variable "architecture" {
  description = "Instruction set of the function, matching the zip's binary or the image: x86_64 or arm64 (about 20 % cheaper per second)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_size" {
  description = "Function memory (MiB); Lambda gives CPU in proportion. The binary needs far less than 256; more only speeds up TLS handshakes."
  type        = number
  default     = 256

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size must be a whole number of MiB between 128 and 10240."
  }
}

variable "timeout_seconds" {
  description = "Function timeout. Each invocation is one Secrets Manager step; the test step retries the new credentials through the proxy for up to test_deadline (60s by default), and a step may first wait up to ROTATOR_LEASE_WAIT (60s by default; extra_environment) for a lease another process (the queue worker, rds-rotator rotate) holds. Must exceed the two together and stay below Lambda's 900 s limit."
  type        = number
  default     = 300

  validation {
    condition     = var.timeout_seconds >= 1 && var.timeout_seconds < 900 && floor(var.timeout_seconds) == var.timeout_seconds
    error_message = "timeout_seconds must be a whole number of seconds below 900 (Lambda's limit)."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions: at most this many steps run at once (Secrets Manager invokes one per step and secret). null leaves the function in the account's unreserved pool. Not 0, which would throttle every step."
  type        = number
  default     = null

  validation {
    condition     = var.reserved_concurrency == null ? true : (var.reserved_concurrency >= 1 && floor(var.reserved_concurrency) == var.reserved_concurrency)
    error_message = "reserved_concurrency must be null or a whole number >= 1."
  }
}

variable "code_signing_config_arn" {
  description = "Lambda code signing configuration for the zip package (package_type Zip only); null: none."
  type        = string
  default     = null
}

################################################################################
# Secrets
################################################################################

variable "rotations" {
  description = <<-EOT
    Secrets Manager rotations, one per application secret: the secret's rotation is attached to
    this function, with rotation_rules schedule_expression (rate(N hours), rate(N days) or
    cron(...), Secrets Manager's syntax) and duration (the window, 1h to 24h, default 3h) in
    which Secrets Manager starts it. secret_arn is the full ARN (Secrets Manager's 6-character
    suffix included), of a secret in the function's own account and region. A rate() schedule is checked against min_interval: the shortest time
    between two rotations, the interval minus the window, must not be below it, or the later
    rotation would only be skipped. cron() schedules are not checked. The key names the
    function's permission for the secret.
  EOT
  type = map(object({
    secret_arn          = string
    schedule_expression = string
    duration            = optional(string, "3h")
  }))
  default = {}

  validation {
    condition     = alltrue([for k, r in var.rotations : can(regex("^[0-9A-Za-z_-]{1,64}$", k))])
    error_message = "Rotation keys must be 1 to 64 characters of letters, digits, '-' and '_' (they become permission statement ids)."
  }

  validation {
    condition     = alltrue([for r in var.rotations : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[^*?]+-[A-Za-z0-9]{6}$", r.secret_arn))])
    error_message = "Each rotation's secret_arn must be a full secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-xxxxxx), without wildcards: it is the permission's source ARN."
  }

  validation {
    # Secrets Manager's limits: rate() from 4 hours to 999 days; a window of 1 to 24 hours.
    condition = alltrue([
      for r in var.rotations : (
        can(regex("^cron\\(.+\\)$", r.schedule_expression)) ||
        (can(regex("^rate\\(([0-9]+) hours?\\)$", r.schedule_expression)) && try(tonumber(regex("^rate\\(([0-9]+) hours?\\)$", r.schedule_expression)[0]) >= 4, false)) ||
        (can(regex("^rate\\(([0-9]+) days?\\)$", r.schedule_expression)) && try(tonumber(regex("^rate\\(([0-9]+) days?\\)$", r.schedule_expression)[0]) >= 1 && tonumber(regex("^rate\\(([0-9]+) days?\\)$", r.schedule_expression)[0]) <= 999, false))
      )
    ])
    error_message = "A rotation's schedule_expression must be rate(N hours) with N >= 4, rate(N days) with 1 <= N <= 999, or cron(...)."
  }

  validation {
    condition     = alltrue([for r in var.rotations : can(regex("^([1-9]|1[0-9]|2[0-4])h$", r.duration))])
    error_message = "A rotation's duration (window) must be 1h to 24h, e.g. 3h."
  }
}

variable "rotate_immediately" {
  description = "rotate_immediately of each rotation when it is attached or changed: true rotates at once; false (the default) waits for the schedule's next window, and Secrets Manager instead runs only the function's testSecret step right away to check the configuration (AWS creates an AWSPENDING version for it and removes it again)."
  type        = bool
  default     = false
}

variable "secret_arns" {
  description = "ARNs of every other secret the function touches: the RDS Proxy secrets AND the optional master secrets of the rotated secrets (the rotated secrets themselves are granted from rotations). Full ARNs or patterns such as arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/proxy/*; a name made only of wildcards is refused."
  type        = list(string)
  default     = []

  validation {
    condition = alltrue([
      for arn in var.secret_arns :
      can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", arn)) &&
      can(regex("[^*?]", regex("secret:(.*)$", arn)[0]))
    ])
    error_message = "Each secret_arns entry must be a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-xxxxxx), and its name part must not be only wildcards."
  }
}

variable "secret_tag_key" {
  description = "Grant access to every secret in this account and region whose tag secret_tag_key has the value secret_tag_value (an IAM aws:ResourceTag condition), in addition to the ARNs. null (with secret_tag_value null) grants by ARN only. Whoever may tag secrets with this key can extend the function's reach: restrict secretsmanager:TagResource on it."
  type        = string
  default     = null

  validation {
    condition     = var.secret_tag_key == null ? true : (length(trimspace(var.secret_tag_key)) > 0 && length(var.secret_tag_key) <= 128)
    error_message = "secret_tag_key must be a non-empty tag key of at most 128 characters (or null)."
  }
}

variable "secret_tag_value" {
  description = "Value of secret_tag_key that marks the secrets the function may rotate. Set both or neither."
  type        = string
  default     = null

  validation {
    condition     = var.secret_tag_value == null ? true : length(var.secret_tag_value) <= 256
    error_message = "secret_tag_value must be at most 256 characters."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys that encrypt the managed secrets. The function gets kms:Decrypt (GetSecretValue) and kms:GenerateDataKey (PutSecretValue) on them, only through Secrets Manager (kms:ViaService). Not needed for secrets encrypted with aws/secretsmanager."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.secrets_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", arn))])
    error_message = "Each secrets_kms_key_arns entry must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID); aliases are not accepted by IAM."
  }
}

variable "proxy_arns" {
  description = "ARNs of the RDS Proxies (arn:aws:rds:REGION:ACCOUNT:db-proxy:prx-...) named by the rotated secrets' proxy_name. Secrets Manager's configuration test (testSecret when a rotation is attached with rotate_immediately = false) runs rds-rotator check, which reads their Auth lists with rds:DescribeDBProxies; the function may do that on these proxies only. Empty: not granted, and that part of the test is a warning (not checked), not a failure."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.proxy_arns : can(regex("^arn:aws[a-z-]*:rds:[a-z0-9-]+:[0-9]{12}:db-proxy:prx-[a-z0-9]+$", arn))])
    error_message = "Each proxy_arns entry must be an RDS Proxy ARN (arn:aws:rds:REGION:ACCOUNT:db-proxy:prx-...), not its name."
  }
}

################################################################################
# Lease table
################################################################################

variable "create_table" {
  description = "Create the DynamoDB table of leases and step records. false uses table_name, an existing table: beside the queue deployment, pass its table (module output table_name), so that both share leases and step records and never rotate one secret at once."
  type        = bool
  default     = true
}

variable "table_name" {
  description = "DynamoDB table for leases and step records: the one to create, or with create_table = false the existing one. null uses rds-rotator, the binary's default (and the queue deployment's with its default name). The key schema is the binary's: one string hash key, secret_arn."
  type        = string
  default     = null

  validation {
    condition     = var.table_name == null ? true : can(regex("^[a-zA-Z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3 to 255 characters of letters, digits, '_', '-' and '.'."
  }
}

variable "table_deletion_protection" {
  description = "DynamoDB deletion protection of a table the module creates. The table holds rotations in progress; deleting it mid-rotation loses the step record a resumed rotation needs."
  type        = bool
  default     = true
}

################################################################################
# Rotation settings (function environment), as for the queue worker
################################################################################

variable "min_interval" {
  description = "ROTATOR_MIN_INTERVAL: a rotation is skipped when the secret was rotated more recently (humantime, e.g. 2h, 1d). It must exceed the longest time any client keeps credentials; the default is twice the AWS caching libraries' hour. Also the floor for a rotation's rate() schedule minus its window."
  type        = string
  default     = "2h"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|m|h|d)$", var.min_interval))
    error_message = "min_interval must be a humantime duration such as 30s, 15m, 1h or 1d."
  }
}

variable "in_use" {
  description = "ROTATOR_IN_USE: what a rotation does when the idle user still has sessions that ran a statement within in_use_window: refuse (wait and retry), warn (go on), or off."
  type        = string
  default     = "refuse"

  validation {
    condition     = contains(["refuse", "warn", "off"], var.in_use)
    error_message = "in_use must be refuse, warn or off."
  }
}

variable "in_use_window" {
  description = "ROTATOR_IN_USE_WINDOW: a session of the idle user counts as in use when it ran a statement this recently (humantime). Keep it above RDS Proxy's idle client timeout (30 min by default) and below min_interval minus the longest client cache."
  type        = string
  default     = "35m"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|m|h|d)$", var.in_use_window))
    error_message = "in_use_window must be a humantime duration such as 30s, 15m or 1h."
  }
}

variable "db_tls" {
  description = "ROTATOR_DB_TLS: verify-full (chain and host name), require (encrypted, unverified) or disable."
  type        = string
  default     = "verify-full"

  validation {
    condition     = contains(["verify-full", "require", "disable"], var.db_tls)
    error_message = "db_tls must be verify-full, require or disable."
  }
}

variable "db_ca_bundle" {
  description = "ROTATOR_DB_CA_BUNDLE: path of a PEM bundle with the RDS CAs inside the function: /var/task/... for a file in the zip, /opt/... in a layer, or the image's path. null leaves it unset."
  type        = string
  default     = null

  validation {
    condition     = var.db_ca_bundle == null ? true : startswith(var.db_ca_bundle, "/")
    error_message = "db_ca_bundle must be an absolute path."
  }
}

variable "test_deadline" {
  description = "ROTATOR_TEST_DEADLINE: how long the test step retries the new credentials through the proxy (humantime). null keeps the binary's default (60s). timeout_seconds must exceed it."
  type        = string
  default     = null

  validation {
    condition     = var.test_deadline == null ? true : can(regex("^[0-9]+(ms|s|m|h)$", var.test_deadline))
    error_message = "test_deadline must be a humantime duration such as 60s or 2m."
  }
}

variable "metrics_namespace" {
  description = "ROTATOR_METRICS_NAMESPACE: CloudWatch namespace of the rotation metrics (embedded metric format on stdout, which Lambda sends to the log group). Keep the queue deployment's, so that both write the same metrics."
  type        = string
  default     = "RdsRotator"
}

variable "event_bus_name" {
  description = "ROTATOR_EVENT_BUS: EventBridge bus (name in this account and region, or ARN) for RotationSucceeded and RotationFailed events (source rds-rotator). null: no events. The function may PutEvents on this bus only."
  type        = string
  default     = null

  validation {
    condition     = var.event_bus_name == null || can(regex("^(arn:[^:]+:events:[a-z0-9-]+:[0-9]{12}:event-bus/)?[A-Za-z0-9._/-]{1,256}$", var.event_bus_name))
    error_message = "event_bus_name must be an event bus name or an event bus ARN."
  }
}

variable "secretsmanager_write_tps" {
  description = "Secrets Manager write calls per second for all the function's instances together (the account-region quota is about 50; leave room for the queue workers and other writers). Each instance gets floor(this / reserved_concurrency), at least 1, as ROTATOR_SM_WRITE_TPS; without reserved concurrency, this whole."
  type        = number
  default     = 40

  validation {
    condition     = var.secretsmanager_write_tps >= 1 && floor(var.secretsmanager_write_tps) == var.secretsmanager_write_tps
    error_message = "secretsmanager_write_tps must be a whole number >= 1."
  }
}

variable "log_level" {
  description = "RUST_LOG for the function."
  type        = string
  default     = "info"
}

variable "extra_environment" {
  description = "Further environment variables for the function (e.g. ROTATOR_LEASE_WAIT, which must stay below timeout_seconds). May not override the ones the module sets, Lambda's reserved ones (AWS_*, _HANDLER, LAMBDA_*), nor set ROTATOR_TEST_FAILPOINTS (tests only)."
  type        = map(string)
  default     = {}

  validation {
    condition = length(setintersection(keys(var.extra_environment), [
      "ROTATOR_TABLE", "ROTATOR_MIN_INTERVAL", "ROTATOR_LOG_FORMAT", "ROTATOR_DB_TLS", "ROTATOR_DB_CA_BUNDLE",
      "ROTATOR_TEST_DEADLINE", "RUST_LOG", "ROTATOR_TEST_FAILPOINTS", "ROTATOR_METRICS", "ROTATOR_METRICS_NAMESPACE",
      "ROTATOR_EVENT_BUS", "ROTATOR_SM_WRITE_TPS", "ROTATOR_IN_USE", "ROTATOR_IN_USE_WINDOW",
      "_HANDLER", "_X_AMZN_TRACE_ID", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
    ])) == 0 && !anytrue([for k in keys(var.extra_environment) : startswith(k, "AWS_")])
    error_message = "extra_environment may not set a variable the module manages (use its input instead), one Lambda reserves (AWS_*, _HANDLER, _X_AMZN_TRACE_ID, LAMBDA_TASK_ROOT, LAMBDA_RUNTIME_DIR) or ROTATOR_TEST_FAILPOINTS."
  }
}

################################################################################
# Network: a VPC function, as the ECS task
################################################################################

variable "vpc_id" {
  description = "VPC of the function's security group."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the function's network interfaces. Lambda never gives them a public IP: they need a NAT gateway or VPC endpoints for Secrets Manager, DynamoDB (and EventBridge with event_bus_name). Logs and metrics go through Lambda itself."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must name at least one subnet."
  }
}

variable "db_ports" {
  description = "Database ports the function connects to: the proxy and, with direct_host, the database (5432 PostgreSQL, 3306 MySQL)."
  type        = list(number)
  default     = [5432]

  validation {
    condition     = length(var.db_ports) > 0 && alltrue([for p in var.db_ports : p >= 1 && p <= 65535])
    error_message = "db_ports must hold at least one port between 1 and 65535."
  }
}

variable "database_security_group_ids" {
  description = "Security groups of the RDS Proxy and the database: the function may open connections to them on db_ports. Their own ingress rules must admit the function (output security_group_id)."
  type        = list(string)
  default     = []
}

variable "database_cidr_blocks" {
  description = "IPv4 CIDR blocks the function may reach on db_ports, as an alternative to database_security_group_ids."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.database_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "database_cidr_blocks must be IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "https_egress_cidr_blocks" {
  description = "Where the function may connect on 443 for the AWS APIs (Secrets Manager, DynamoDB, EventBridge). 0.0.0.0/0 through a NAT gateway by default; with interface VPC endpoints, give the VPC's CIDR instead."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.https_egress_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "https_egress_cidr_blocks must be IPv4 CIDR blocks."
  }
}

variable "https_egress_prefix_list_ids" {
  description = "Prefix lists the function may reach on 443, e.g. the DynamoDB gateway endpoint's."
  type        = list(string)
  default     = []
}

################################################################################
# Logs, alarms, dashboard
################################################################################

variable "log_retention_days" {
  description = "Retention of the function's CloudWatch log group."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch Logs' retention values (1, 3, 5, 7, 14, 30, 60, 90, ..., 3653)."
  }
}

variable "create_alarms" {
  description = "Create the alarm on the function's own errors (AWS/Lambda Errors, timeouts included, and Throttles): a step that fails or is throttled; Secrets Manager retries the rotation later."
  type        = bool
  default     = true
}

variable "create_metric_alarms" {
  description = "Create the alarms on the rotation metrics in metrics_namespace: rotations failed, idle user in use. Set false beside the queue deployment: its alarms watch the same metrics (one namespace, no dimensions), this function's rotations included."
  type        = bool
  default     = true
}

variable "alarm_actions" {
  description = "ARNs notified when an alarm fires (e.g. SNS topics)."
  type        = list(string)
  default     = []
}

variable "ok_actions" {
  description = "ARNs notified when an alarm returns to OK."
  type        = list(string)
  default     = []
}

variable "create_dashboard" {
  description = "Create the CloudWatch dashboard NAME: the rotation metrics and the function's invocations, errors, throttles and duration. Beside the queue deployment, give that module this function's ARN (rotation_function_arns) and set this false: its dashboard then shows both. CloudWatch charges $3 a month for each dashboard beyond an account's first three."
  type        = bool
  default     = true
}
