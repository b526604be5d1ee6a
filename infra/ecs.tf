################################################################################
# ECS Fargate service running `rds-rotator worker`
################################################################################

resource "aws_ecs_cluster" "this" {
  count = var.create_cluster ? 1 : 0

  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

locals {
  # Unset optional settings are left out, so the worker's own defaults apply. Sorted by name, as
  # ECS returns them, so plans stay quiet.
  environment_map = merge(var.extra_environment, {
    ROTATOR_QUEUE_URL          = aws_sqs_queue.this.url
    ROTATOR_DLQ_URL            = aws_sqs_queue.dlq.url
    ROTATOR_TABLE              = aws_dynamodb_table.this.name
    ROTATOR_CONCURRENCY        = tostring(var.concurrency)
    ROTATOR_MIN_INTERVAL       = var.min_interval
    ROTATOR_IN_USE             = var.in_use
    ROTATOR_IN_USE_WINDOW      = var.in_use_window
    ROTATOR_VISIBILITY_TIMEOUT = "${var.visibility_timeout_seconds}s"
    ROTATOR_LOG_FORMAT         = "json"
    ROTATOR_DB_TLS             = var.db_tls
    ROTATOR_DB_CA_BUNDLE       = var.db_ca_bundle
    ROTATOR_TEST_DEADLINE      = var.test_deadline
    ROTATOR_SHUTDOWN_GRACE     = "${var.shutdown_grace_seconds}s"
    ROTATOR_HEALTH_FILE        = local.health_file
    ROTATOR_METRICS            = "emf"
    ROTATOR_METRICS_NAMESPACE  = var.metrics_namespace
    ROTATOR_EVENT_BUS          = var.event_bus_name
    # Secrets whose Secrets Manager rotation is this tool's own function (modules/lambda) are not
    # refused as "Secrets Manager's own rotation is attached".
    ROTATOR_ROTATION_FUNCTION_ARNS = length(var.rotation_function_arns) > 0 ? join(",", var.rotation_function_arns) : null
    # The quota is per account and region: the tasks share it (as many as autoscaling may run).
    ROTATOR_SM_WRITE_TPS = tostring(max(1, floor(var.secretsmanager_write_tps / max(1, local.max_tasks))))
    AWS_REGION           = local.region
    RUST_LOG             = var.log_level
  })
  environment = [
    for k in sort(keys(local.environment_map)) : { name = k, value = local.environment_map[k] }
    if local.environment_map[k] != null
  ]

  container_definition = {
    name      = local.container_name
    image     = var.image
    essential = true
    # The image's ENTRYPOINT is rds-rotator.
    command                = ["worker"]
    user                   = var.container_user
    readonlyRootFilesystem = var.readonly_root_filesystem
    privileged             = false
    linuxParameters = {
      capabilities = { drop = ["ALL"] }
    }
    environment = local.environment
    # The health file lives in /tmp: with a read-only root filesystem, a task volume (Fargate
    # ephemeral storage) that takes the owner and mode of the image's VOLUME /tmp.
    mountPoints  = var.readonly_root_filesystem ? [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }] : []
    volumesFrom  = []
    portMappings = []
    healthCheck = {
      command     = ["CMD", var.binary_path, "health"]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    # SIGTERM, then SIGKILL after stopTimeout: must exceed the worker's shutdown grace.
    stopTimeout = var.stop_timeout_seconds
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = local.region
        awslogs-stream-prefix = "worker"
      }
    }
  }
}

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode([local.container_definition])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Fargate ephemeral storage, bind-mounted at /tmp when the root filesystem is read-only.
  dynamic "volume" {
    for_each = var.readonly_root_filesystem ? ["tmp"] : []
    content {
      name = volume.value
    }
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.stop_timeout_seconds > var.shutdown_grace_seconds
      error_message = "stop_timeout_seconds must be greater than shutdown_grace_seconds, or ECS kills the worker before running rotations reach their next step."
    }
  }
}

# Two services, one of which exists: with autoscaling, Application Auto Scaling owns desired_count
# and Terraform must ignore it, and ignore_changes cannot depend on a variable. Both have the same
# name, so switching autoscaling on or off replaces the service unless its state is moved first
# (README "Scaling to zero").
locals {
  autoscaled   = var.autoscaling != null
  max_tasks    = local.autoscaled ? var.autoscaling.max_count : var.desired_count
  service_name = one(concat(aws_ecs_service.this[*].name, aws_ecs_service.autoscaled[*].name))
  # The scalable target names the cluster, not its ARN (a missing cluster_arn fails the service's
  # precondition instead).
  cluster_name = local.cluster_arn == null ? "" : element(split("/", local.cluster_arn), length(split("/", local.cluster_arn)) - 1)
}

# Before autoscaling existed, the service was aws_ecs_service.this (no count).
moved {
  from = aws_ecs_service.this
  to   = aws_ecs_service.this[0]
}

resource "aws_ecs_service" "this" {
  count = local.autoscaled ? 0 : 1

  name                               = var.name
  cluster                            = local.cluster_arn
  task_definition                    = aws_ecs_task_definition.this.arn
  desired_count                      = var.desired_count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"
  enable_execute_command             = false

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.this.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.create_cluster || var.cluster_arn != null
      error_message = "Set cluster_arn when create_cluster is false."
    }
  }
}

# The same service under Application Auto Scaling (autoscaling.tf): it starts at min_count and
# its desired_count is the scaling policies' from then on.
resource "aws_ecs_service" "autoscaled" {
  count = local.autoscaled ? 1 : 0

  name                               = var.name
  cluster                            = local.cluster_arn
  task_definition                    = aws_ecs_task_definition.this.arn
  desired_count                      = var.autoscaling.min_count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"
  enable_execute_command             = false

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.this.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  tags = var.tags

  lifecycle {
    ignore_changes = [desired_count]

    precondition {
      condition     = var.create_cluster || var.cluster_arn != null
      error_message = "Set cluster_arn when create_cluster is false."
    }
  }
}

################################################################################
# Security group: no ingress; egress to the database/proxy and to the AWS APIs
################################################################################

locals {
  # count, not for_each, for every egress rule: ids created in the same configuration (security
  # groups, endpoint prefix lists) are unknown at plan time, and for_each keys must be known.
  db_sg_rules   = [for pair in setproduct(var.database_security_group_ids, var.db_ports) : { sg = pair[0], port = pair[1] }]
  db_cidr_rules = [for pair in setproduct(var.database_cidr_blocks, var.db_ports) : { cidr = pair[0], port = pair[1] }]
}

resource "aws_security_group" "this" {
  name        = "${var.name}-worker"
  description = "rds-rotator worker: no ingress; egress to the database, RDS Proxy and AWS APIs"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
    precondition {
      condition     = length(var.database_security_group_ids) + length(var.database_cidr_blocks) > 0
      error_message = "The worker must reach the database and the proxy: set database_security_group_ids and/or database_cidr_blocks."
    }
  }
}

resource "aws_vpc_security_group_egress_rule" "database_sg" {
  count = length(local.db_sg_rules)

  security_group_id            = aws_security_group.this.id
  description                  = "Database / RDS Proxy"
  ip_protocol                  = "tcp"
  from_port                    = local.db_sg_rules[count.index].port
  to_port                      = local.db_sg_rules[count.index].port
  referenced_security_group_id = local.db_sg_rules[count.index].sg
  tags                         = var.tags
}

resource "aws_vpc_security_group_egress_rule" "database_cidr" {
  count = length(local.db_cidr_rules)

  security_group_id = aws_security_group.this.id
  description       = "Database / RDS Proxy"
  ip_protocol       = "tcp"
  from_port         = local.db_cidr_rules[count.index].port
  to_port           = local.db_cidr_rules[count.index].port
  cidr_ipv4         = local.db_cidr_rules[count.index].cidr
  tags              = var.tags
}

resource "aws_vpc_security_group_egress_rule" "https_cidr" {
  count = length(var.https_egress_cidr_blocks)

  security_group_id = aws_security_group.this.id
  description       = "AWS APIs (HTTPS)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = var.https_egress_cidr_blocks[count.index]
  tags              = var.tags
}

resource "aws_vpc_security_group_egress_rule" "https_prefix_list" {
  count = length(var.https_egress_prefix_list_ids)

  security_group_id = aws_security_group.this.id
  description       = "AWS APIs (HTTPS), prefix list"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = var.https_egress_prefix_list_ids[count.index]
  tags              = var.tags
}
