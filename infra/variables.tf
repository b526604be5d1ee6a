################################################################################
# General
################################################################################

variable "name" {
  description = "Name of the deployment. Prefix of every resource name: the queue is NAME, the dead-letter queue NAME-dlq, the roles NAME-task, NAME-execution and NAME-scheduler."
  type        = string
  default     = "rds-rotator"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,31}$", var.name))
    error_message = "name must start with a letter and contain only letters, digits and '-' (at most 32 characters), so that every derived name stays within AWS limits."
  }
}

variable "tags" {
  description = "Tags for every resource the module creates."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the module's own resources: the SQS queues, the DynamoDB table and the log group. null uses AWS-managed encryption (SQS-managed SSE, the aws/dynamodb key, CloudWatch Logs' default). Also encrypts the schedules. The key policy must let SQS, DynamoDB, CloudWatch Logs (logs.REGION.amazonaws.com), EventBridge Scheduler and the scheduler role use it."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null ? true : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

################################################################################
# Secrets the worker rotates
################################################################################

variable "secret_arns" {
  description = "ARNs of every secret the worker touches: the application secrets AND their RDS Proxy secrets AND the optional master secrets. Full ARNs (with AWS's 6-character suffix), or patterns such as arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-??????. A pattern must name something: a name made only of wildcards is refused, so the worker is never granted every secret."
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
  description = "Grant access to every secret in this account and region whose tag secret_tag_key has the value secret_tag_value (an IAM aws:ResourceTag condition), in addition to secret_arns. null (with secret_tag_value null) grants by ARN only. Whoever may tag secrets with this key can extend the worker's reach: restrict secretsmanager:TagResource on it (for example with an SCP)."
  type        = string
  default     = null

  validation {
    condition     = var.secret_tag_key == null ? true : (length(trimspace(var.secret_tag_key)) > 0 && length(var.secret_tag_key) <= 128)
    error_message = "secret_tag_key must be a non-empty tag key of at most 128 characters (or null)."
  }
}

variable "secret_tag_value" {
  description = "Value of secret_tag_key that marks the secrets the worker may rotate. Set both or neither."
  type        = string
  default     = null

  validation {
    condition     = var.secret_tag_value == null ? true : length(var.secret_tag_value) <= 256
    error_message = "secret_tag_value must be at most 256 characters."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys that encrypt the managed secrets. The worker gets kms:Decrypt (GetSecretValue) and kms:GenerateDataKey (PutSecretValue) on them, only through Secrets Manager (kms:ViaService). Not needed for secrets encrypted with aws/secretsmanager."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.secrets_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", arn))])
    error_message = "Each secrets_kms_key_arns entry must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID); aliases are not accepted by IAM."
  }
}

################################################################################
# Schedules
################################################################################

variable "schedules" {
  description = <<-EOT
    EventBridge Scheduler schedules, one per entry, each sending one rotation request to the queue.
    The target input is exactly the worker's message, {"secret_id": ..., "force": ..., "reason": ...}.
    secret_id is a secret name or ARN; schedule_expression is rate(...), cron(...) or at(...);
    force rotates even if the secret was rotated less than min_interval ago; timezone applies to
    cron() and at(). The key is the schedule's name suffix (NAME-KEY).
  EOT
  type = map(object({
    secret_id           = string
    schedule_expression = string
    force               = optional(bool, false)
    reason              = optional(string, "scheduled")
    timezone            = optional(string, "UTC")
    enabled             = optional(bool, true)
    description         = optional(string)
  }))
  default = {}

  validation {
    condition     = alltrue([for k, s in var.schedules : can(regex("^[0-9A-Za-z_.-]{1,30}$", k))])
    error_message = "Schedule keys must be 1 to 30 characters of letters, digits, '-', '_' and '.' (the schedule is named NAME-KEY, at most 64 characters)."
  }

  validation {
    # The worker refuses a blank secret_id, one longer than 2048 characters, or one with control
    # characters (src/message.rs); a schedule that sends one would only fill the dead-letter queue.
    condition = alltrue([
      for s in var.schedules :
      length(trimspace(s.secret_id)) > 0 && length(s.secret_id) <= 2048 && !can(regex("[[:cntrl:]]", s.secret_id))
    ])
    error_message = "Each schedule needs a secret_id: a secret name or ARN, not blank, at most 2048 characters, no control characters."
  }

  validation {
    condition     = alltrue([for s in var.schedules : length(s.reason) <= 1024 && !can(regex("[[:cntrl:]]", s.reason))])
    error_message = "A schedule's reason must be at most 1024 characters with no control characters."
  }

  validation {
    condition     = alltrue([for s in var.schedules : can(regex("^(rate|cron|at)\\(.+\\)$", s.schedule_expression))])
    error_message = "schedule_expression must be rate(...), cron(...) or at(...)."
  }
}

variable "fanout_schedule" {
  description = <<-EOT
    Optional fan-out schedule: sends {"select": {"tag_key": ..., "tag_value": ...}}, and the worker
    enqueues one request per secret carrying that tag. null disables it. The worker finds those
    secrets with secretsmanager:ListSecrets, which IAM only grants on Resource "*"; this module
    never grants a secretsmanager action on "*", so attach that permission to the task role
    yourself (output task_role_name) if you accept it, or use one entry in schedules per secret.
    Without it the fan-out message is dead-lettered (access denied) and the DLQ alarm fires.
    The tagged secrets must also be covered by secret_arns or secret_tag_key/secret_tag_value.
  EOT
  type = object({
    tag_key             = string
    tag_value           = string
    schedule_expression = string
    timezone            = optional(string, "UTC")
    enabled             = optional(bool, true)
  })
  default = null

  validation {
    condition = var.fanout_schedule == null ? true : (
      length(trimspace(var.fanout_schedule.tag_key)) > 0 &&
      length(var.fanout_schedule.tag_key) <= 128 &&
      length(var.fanout_schedule.tag_value) <= 256 &&
      !can(regex("[[:cntrl:]]", "${var.fanout_schedule.tag_key}${var.fanout_schedule.tag_value}")) &&
      can(regex("^(rate|cron|at)\\(.+\\)$", var.fanout_schedule.schedule_expression))
    )
    error_message = "fanout_schedule needs a non-empty tag_key (at most 128 characters), a tag_value of at most 256 characters, no control characters, and a rate(...), cron(...) or at(...) schedule_expression."
  }
}

variable "create_schedule_group" {
  description = "Create an EventBridge Scheduler schedule group named NAME for the schedules. false puts them in schedule_group_name."
  type        = bool
  default     = true
}

variable "schedule_group_name" {
  description = "Existing schedule group to use when create_schedule_group is false."
  type        = string
  default     = "default"
}

################################################################################
# Queue and table
################################################################################

variable "visibility_timeout_seconds" {
  description = "The queue's visibility timeout; also passed to the worker (ROTATOR_VISIBILITY_TIMEOUT), which renews it every third of that while a rotation runs."
  type        = number
  default     = 60

  validation {
    condition     = var.visibility_timeout_seconds >= 30 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be between 30 and 43200."
  }
}

variable "max_receive_count" {
  description = "Receives after which SQS moves a message that keeps failing transiently to the dead-letter queue."
  type        = number
  default     = 10

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "message_retention_seconds" {
  description = "How long the request queue keeps a message (the dead-letter queue always keeps 14 days)."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "table_name" {
  description = "DynamoDB table for leases and step records. null uses name. The key schema is the binary's: one string hash key, secret_arn."
  type        = string
  default     = null

  validation {
    condition     = var.table_name == null ? true : can(regex("^[a-zA-Z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3 to 255 characters of letters, digits, '_', '-' and '.'."
  }
}

variable "table_deletion_protection" {
  description = "DynamoDB deletion protection. The table holds rotations in progress; deleting it mid-rotation loses the step record a resumed rotation needs."
  type        = bool
  default     = true
}

################################################################################
# ECS
################################################################################

variable "create_cluster" {
  description = "Create an ECS cluster named NAME (with Container Insights). false runs the service in cluster_arn."
  type        = bool
  default     = true
}

variable "cluster_arn" {
  description = "Existing ECS cluster for the service when create_cluster is false."
  type        = string
  default     = null
}

variable "image" {
  description = "Container image of rds-rotator (ENTRYPOINT rds-rotator, non-root user 65532, VOLUME /tmp), e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.2.3 or an @sha256 digest. For an ECR image the execution role may pull only that repository."
  type        = string

  validation {
    condition     = length(trimspace(var.image)) > 0
    error_message = "image must not be empty."
  }
}

variable "binary_path" {
  description = "Absolute path of the rds-rotator binary in the image, for the container health check (`BINARY health`). The repository's Dockerfile installs it at /usr/local/bin/rds-rotator (ENTRYPOINT rds-rotator, on PATH)."
  type        = string
  default     = "/usr/local/bin/rds-rotator"

  validation {
    condition     = startswith(var.binary_path, "/")
    error_message = "binary_path must be absolute (the image has no shell to search PATH with)."
  }
}

variable "container_user" {
  description = "User the container runs as (the image's own non-root user). Set explicitly so that a changed image cannot silently run as root."
  type        = string
  default     = "65532:65532"

  validation {
    condition     = !can(regex("^(0|root)(:|$)", var.container_user))
    error_message = "container_user must not be root."
  }
}

variable "cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 256
}

variable "memory" {
  description = "Fargate task memory (MiB)."
  type        = number
  default     = 512
}

variable "cpu_architecture" {
  description = "Task CPU architecture, matching the image: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "desired_count" {
  description = "Number of worker tasks (ignored when autoscaling is set). Rotations are serialised per secret by the DynamoDB lease, so more tasks only add throughput and availability."
  type        = number
  default     = 1

  validation {
    condition     = var.desired_count >= 0 && floor(var.desired_count) == var.desired_count
    error_message = "desired_count must be a whole number >= 0."
  }
}

variable "autoscaling" {
  description = <<-EOT
    Scale the service on the queue instead of running desired_count tasks around the clock. null
    (the default) keeps desired_count. With an object, Application Auto Scaling runs between
    min_count (0: no task while nothing is to do) and max_count tasks: one more task every five minutes
    while requests wait in the queue, and back to min_count once nothing has been waiting, in
    flight or delayed for scale_in_idle_minutes, so a running rotation is not stopped. The first
    request after an idle spell waits for a task to start (about 2 to 5 minutes; README "Scaling
    to zero"). desired_count is then ignored. Switching it on or off replaces the ECS service
    unless its state is moved first (README).
  EOT
  type = object({
    min_count             = optional(number, 0)
    max_count             = optional(number, 1)
    scale_in_idle_minutes = optional(number, 15)
  })
  default = null

  validation {
    condition = var.autoscaling == null ? true : (
      var.autoscaling.min_count >= 0 && floor(var.autoscaling.min_count) == var.autoscaling.min_count &&
      var.autoscaling.max_count >= 1 && floor(var.autoscaling.max_count) == var.autoscaling.max_count &&
      var.autoscaling.max_count >= var.autoscaling.min_count && var.autoscaling.max_count <= 100
    )
    error_message = "autoscaling needs whole numbers 0 <= min_count <= max_count, 1 <= max_count <= 100."
  }

  validation {
    # At least 5 one-minute periods: SQS's counts are approximate, and a single empty minute
    # between two requests is no reason to stop a task. At most a day, CloudWatch's limit for an
    # alarm's evaluation range.
    condition     = var.autoscaling == null ? true : (var.autoscaling.scale_in_idle_minutes >= 5 && var.autoscaling.scale_in_idle_minutes <= 1440 && floor(var.autoscaling.scale_in_idle_minutes) == var.autoscaling.scale_in_idle_minutes)
    error_message = "autoscaling.scale_in_idle_minutes must be a whole number of minutes between 5 and 1440."
  }
}

variable "readonly_root_filesystem" {
  description = "Run the container with a read-only root filesystem; /tmp (the health file) is then a task volume. Fargate creates that volume root-owned 0755 unless the image declares VOLUME /tmp, in which case it copies the image's /tmp with its permissions (1777): the image must declare it, or uid 65532 cannot write its health file and the task never becomes healthy. false keeps the image's own writable /tmp."
  type        = bool
  default     = true
}

variable "stop_timeout_seconds" {
  description = "ECS stopTimeout: seconds between SIGTERM and SIGKILL. Must exceed shutdown_grace_seconds, so that running rotations reach their next step and release their leases."
  type        = number
  default     = 30

  validation {
    condition     = var.stop_timeout_seconds >= 2 && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must be between 2 and 120 (Fargate's limit)."
  }
}

################################################################################
# Worker settings (container environment)
################################################################################

variable "concurrency" {
  description = "ROTATOR_CONCURRENCY: rotations at once per task."
  type        = number
  default     = 4

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 64 && floor(var.concurrency) == var.concurrency
    error_message = "concurrency must be a whole number between 1 and 64."
  }
}

variable "min_interval" {
  description = "ROTATOR_MIN_INTERVAL: requests for a secret rotated more recently are skipped unless force is true (humantime, e.g. 2h, 1d). It must exceed the longest time any client keeps credentials; the default is twice the AWS caching libraries' hour."
  type        = string
  default     = "2h"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|m|h|d)$", var.min_interval))
    error_message = "min_interval must be a humantime duration such as 30s, 15m, 1h or 1d."
  }
}

variable "in_use" {
  description = "ROTATOR_IN_USE: what a rotation does when the idle user still has sessions that ran a statement within in_use_window (an application holding credentials from two rotations ago): refuse (wait and retry), warn (go on), or off."
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

variable "shutdown_grace_seconds" {
  description = "ROTATOR_SHUTDOWN_GRACE in seconds: time running rotations get to reach their next step on SIGTERM. Keep it below stop_timeout_seconds."
  type        = number
  default     = 20

  validation {
    condition     = var.shutdown_grace_seconds >= 1
    error_message = "shutdown_grace_seconds must be at least 1."
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
  description = "ROTATOR_DB_CA_BUNDLE: path, inside the image, of a PEM bundle with the RDS CAs (RDS certificates are not signed by public roots). null leaves it unset."
  type        = string
  default     = null
}

variable "test_deadline" {
  description = "ROTATOR_TEST_DEADLINE: how long the test step retries the new credentials through the proxy (humantime). null keeps the worker's default (60s)."
  type        = string
  default     = null

  validation {
    condition     = var.test_deadline == null ? true : can(regex("^[0-9]+(ms|s|m|h)$", var.test_deadline))
    error_message = "test_deadline must be a humantime duration such as 60s or 2m."
  }
}

variable "rotation_function_arns" {
  description = "ROTATOR_ROTATION_FUNCTION_ARNS: ARNs of this tool's own Secrets Manager rotation functions (modules/lambda, output function_arn). A secret whose Secrets Manager rotation is attached to one of them is rotated by the worker too, sharing the lease table; one attached to any other function is refused. Their names also add a row of Lambda widgets to the dashboard."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.rotation_function_arns : can(regex("^arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]+)?$", arn))])
    error_message = "Each rotation_function_arns entry must be a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME, optionally with :ALIAS or :VERSION) and contain no comma."
  }
}

variable "log_level" {
  description = "RUST_LOG for the worker."
  type        = string
  default     = "info"
}

variable "extra_environment" {
  description = "Further environment variables for the container (e.g. ROTATOR_RETRY_DELAY). May not override the ones the module sets, nor set ROTATOR_TEST_FAILPOINTS (tests only)."
  type        = map(string)
  default     = {}

  validation {
    condition = length(setintersection(keys(var.extra_environment), [
      "ROTATOR_QUEUE_URL", "ROTATOR_DLQ_URL", "ROTATOR_TABLE", "ROTATOR_CONCURRENCY", "ROTATOR_MIN_INTERVAL",
      "ROTATOR_VISIBILITY_TIMEOUT", "ROTATOR_LOG_FORMAT", "ROTATOR_DB_TLS", "ROTATOR_DB_CA_BUNDLE",
      "ROTATOR_TEST_DEADLINE", "ROTATOR_SHUTDOWN_GRACE", "ROTATOR_HEALTH_FILE", "AWS_REGION", "RUST_LOG",
      "ROTATOR_TEST_FAILPOINTS", "ROTATOR_METRICS", "ROTATOR_METRICS_NAMESPACE", "ROTATOR_EVENT_BUS",
      "ROTATOR_SM_WRITE_TPS", "ROTATOR_IN_USE", "ROTATOR_IN_USE_WINDOW", "ROTATOR_ROTATION_FUNCTION_ARNS",
    ])) == 0
    error_message = "extra_environment may not set a variable the module manages (use its input instead) or ROTATOR_TEST_FAILPOINTS."
  }
}

################################################################################
# Network
################################################################################

variable "vpc_id" {
  description = "VPC of the worker's security group."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the tasks (no public IP is assigned: they need a NAT gateway or VPC endpoints for ECR, CloudWatch Logs, SQS, DynamoDB and Secrets Manager)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must name at least one subnet."
  }
}

variable "db_ports" {
  description = "Database ports the worker connects to: the proxy and, with direct_host, the database (5432 PostgreSQL, 3306 MySQL)."
  type        = list(number)
  default     = [5432]

  validation {
    condition     = length(var.db_ports) > 0 && alltrue([for p in var.db_ports : p >= 1 && p <= 65535])
    error_message = "db_ports must hold at least one port between 1 and 65535."
  }
}

variable "database_security_group_ids" {
  description = "Security groups of the RDS Proxy and the database: the worker may open connections to them on db_ports. Their own ingress rules must admit the worker (output security_group_id)."
  type        = list(string)
  default     = []
}

variable "database_cidr_blocks" {
  description = "IPv4 CIDR blocks the worker may reach on db_ports, as an alternative to database_security_group_ids."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.database_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "database_cidr_blocks must be IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "https_egress_cidr_blocks" {
  description = "Where the worker may connect on 443 for the AWS APIs (SQS, DynamoDB, Secrets Manager, ECR, CloudWatch Logs). 0.0.0.0/0 through a NAT gateway by default; with interface VPC endpoints, give the VPC's CIDR instead."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.https_egress_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "https_egress_cidr_blocks must be IPv4 CIDR blocks."
  }
}

variable "https_egress_prefix_list_ids" {
  description = "Prefix lists the worker may reach on 443, e.g. the S3 gateway endpoint's (ECR layers) and DynamoDB's."
  type        = list(string)
  default     = []
}

################################################################################
# Logs and alarms
################################################################################

variable "log_retention_days" {
  description = "Retention of the worker's CloudWatch log group."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch Logs' retention values (1, 3, 5, 7, 14, 30, 60, 90, ..., 3653)."
  }
}

variable "create_alarms" {
  description = "Create the CloudWatch alarms: dead-letter queue not empty, rotations failed, oldest request too old, idle user in use."
  type        = bool
  default     = true
}

variable "create_dashboard" {
  description = "Create the CloudWatch dashboard NAME: rotations, durations, retries, in-use deferrals, step latency, the queue and the DLQ, and the functions in rotation_function_arns. CloudWatch charges $3 a month for each dashboard beyond an account's first three."
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

variable "metrics_namespace" {
  description = "CloudWatch namespace of the worker's own metrics (embedded metric format in its JSON logs)."
  type        = string
  default     = "RdsRotator"
}

variable "secretsmanager_write_tps" {
  description = "Secrets Manager write calls per second for all worker tasks together (the account-region quota is about 50; leave room for other writers). Each task gets floor(this / desired_count), or floor(this / autoscaling.max_count), at least 1, as ROTATOR_SM_WRITE_TPS."
  type        = number
  default     = 40

  validation {
    condition     = var.secretsmanager_write_tps >= 1 && floor(var.secretsmanager_write_tps) == var.secretsmanager_write_tps
    error_message = "secretsmanager_write_tps must be a whole number >= 1."
  }
}

variable "event_bus_name" {
  description = "ROTATOR_EVENT_BUS: EventBridge bus (name in this account and region, or ARN) for RotationSucceeded and RotationFailed events (source rds-rotator). null: no events. The task role may PutEvents on this bus only."
  type        = string
  default     = null

  validation {
    condition     = var.event_bus_name == null || can(regex("^(arn:[^:]+:events:[a-z0-9-]+:[0-9]{12}:event-bus/)?[A-Za-z0-9._/-]{1,256}$", var.event_bus_name))
    error_message = "event_bus_name must be an event bus name or an event bus ARN."
  }
}

variable "rotation_failed_metric_dimensions" {
  description = "Dimensions of the RotationsFailed metric the alarm watches. CloudWatch matches the exact dimension set: keep this equal to the set the worker emits (none by default)."
  type        = map(string)
  default     = {}
}

variable "queue_age_alarm_threshold_seconds" {
  description = "Alarm when the oldest request has waited longer than this (the worker is down, cannot reach AWS, or is saturated)."
  type        = number
  default     = 3600
}
