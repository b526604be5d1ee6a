# The worker's task: command, environment, health check, shutdown timing, read-only root with a
# writable /tmp, non-root user, logs; the service and its network. Mock provider: nothing is created.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  image       = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0"
  vpc_id      = "vpc-0123456789abcdef0"
  subnet_ids  = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  secret_arns = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"]

  database_security_group_ids = ["sg-0fedcba9876543210", "sg-0aaaaaaaaaaaaaaaa"]
  db_ports                    = [5432]
}

run "task_definition" {
  command = apply

  assert {
    condition     = length(jsondecode(aws_ecs_task_definition.this.container_definitions)) == 1
    error_message = "The task must have exactly one container."
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].command == ["worker"]
    error_message = "The container command is not [\"worker\"] (the image's ENTRYPOINT is /rds-rotator)."
  }

  assert {
    condition = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].healthCheck == {
      command = ["CMD", "/usr/local/bin/rds-rotator", "health"], interval = 30, timeout = 5, retries = 3, startPeriod = 30
    }
    error_message = "The health check is not [\"CMD\", \"/usr/local/bin/rds-rotator\", \"health\"] every 30s, timeout 5, 3 retries, start period 30."
  }

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].stopTimeout == 30
    error_message = "stopTimeout is not 30."
  }

  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].readonlyRootFilesystem == true
      && jsondecode(aws_ecs_task_definition.this.container_definitions)[0].mountPoints == [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
      && one(aws_ecs_task_definition.this.volume).name == "tmp"
    )
    error_message = "The root filesystem must be read-only with a task volume mounted writable at /tmp."
  }

  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].user == "65532:65532"
      && jsondecode(aws_ecs_task_definition.this.container_definitions)[0].privileged == false
      && jsondecode(aws_ecs_task_definition.this.container_definitions)[0].linuxParameters.capabilities.drop == ["ALL"]
    )
    error_message = "The container must run as 65532, unprivileged, with every capability dropped."
  }

  assert {
    condition = {
      for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : e.name => e.value
      } == {
      AWS_REGION                 = "eu-west-1"
      ROTATOR_CONCURRENCY        = "4"
      ROTATOR_DB_TLS             = "verify-full"
      ROTATOR_DLQ_URL            = "https://sqs.eu-west-1.amazonaws.com/123456789012/rds-rotator-dlq"
      ROTATOR_HEALTH_FILE        = "/tmp/rds-rotator.health"
      ROTATOR_IN_USE             = "refuse"
      ROTATOR_IN_USE_WINDOW      = "35m"
      ROTATOR_LOG_FORMAT         = "json"
      ROTATOR_METRICS            = "emf"
      ROTATOR_METRICS_NAMESPACE  = "RdsRotator"
      ROTATOR_MIN_INTERVAL       = "2h"
      ROTATOR_QUEUE_URL          = "https://sqs.eu-west-1.amazonaws.com/123456789012/rds-rotator"
      ROTATOR_SHUTDOWN_GRACE     = "20s"
      ROTATOR_SM_WRITE_TPS       = "40"
      ROTATOR_TABLE              = "rds-rotator"
      ROTATOR_VISIBILITY_TIMEOUT = "60s"
      RUST_LOG                   = "info"
    }
    error_message = "The container environment is not the expected one."
  }

  assert {
    condition = tolist([for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : e.name]) == sort([
      for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : e.name
    ])
    error_message = "The environment is not sorted by name (ECS returns it sorted; unsorted means a diff on every plan)."
  }

  assert {
    condition = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].logConfiguration == {
      logDriver = "awslogs"
      options   = { awslogs-group = "/ecs/rds-rotator", awslogs-region = "eu-west-1", awslogs-stream-prefix = "worker" }
    }
    error_message = "The container does not log to the module's log group."
  }

  assert {
    condition = (
      aws_ecs_task_definition.this.requires_compatibilities == toset(["FARGATE"])
      && aws_ecs_task_definition.this.network_mode == "awsvpc"
      && aws_ecs_task_definition.this.cpu == "256" && aws_ecs_task_definition.this.memory == "512"
      && one(aws_ecs_task_definition.this.runtime_platform).cpu_architecture == "X86_64"
    )
    error_message = "The task is not a 256/512 Fargate X86_64 task."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this.retention_in_days == 30
    error_message = "Log retention is not 30 days by default."
  }
}

run "service_and_network" {
  command = apply

  assert {
    condition = (
      aws_ecs_service.this[0].launch_type == "FARGATE" && aws_ecs_service.this[0].desired_count == 1
      && one(aws_ecs_service.this[0].network_configuration).assign_public_ip == false
      && one(aws_ecs_service.this[0].network_configuration).security_groups == toset([aws_security_group.this.id])
      && one(aws_ecs_service.this[0].network_configuration).subnets == toset(var.subnet_ids)
      && aws_ecs_service.this[0].cluster == aws_ecs_cluster.this[0].arn
    )
    error_message = "The service is not one Fargate task in the given subnets, without public IP, in the module's cluster."
  }

  assert {
    condition = toset([for r in aws_vpc_security_group_egress_rule.database_sg : "${r.referenced_security_group_id}:${r.from_port}-${r.to_port}"]) == toset([
      "sg-0fedcba9876543210:5432-5432", "sg-0aaaaaaaaaaaaaaaa:5432-5432",
    ])
    error_message = "Egress to the database security groups is not exactly db_ports."
  }

  assert {
    condition     = [for r in aws_vpc_security_group_egress_rule.https_cidr : "${r.cidr_ipv4}:${r.from_port}-${r.to_port}"] == ["0.0.0.0/0:443-443"]
    error_message = "HTTPS egress for the AWS APIs is missing or wider than 443."
  }

  assert {
    condition     = length(aws_vpc_security_group_egress_rule.database_cidr) == 0 && length(aws_vpc_security_group_egress_rule.https_prefix_list) == 0
    error_message = "Unexpected egress rules."
  }

  assert {
    condition     = aws_sqs_queue.this.visibility_timeout_seconds == 60 && jsondecode(aws_sqs_queue.this.redrive_policy) == { deadLetterTargetArn = aws_sqs_queue.dlq.arn, maxReceiveCount = 10 }
    error_message = "The request queue is not 60s visibility with the DLQ after 10 receives."
  }

  assert {
    condition     = aws_sqs_queue.dlq.message_retention_seconds == 1209600 && aws_sqs_queue.this.sqs_managed_sse_enabled && aws_sqs_queue.dlq.sqs_managed_sse_enabled
    error_message = "The DLQ does not keep 14 days, or a queue is not encrypted."
  }

  assert {
    condition     = length(output.alarm_arns) == 4 && aws_cloudwatch_metric_alarm.idle_user_in_use[0].metric_name == "IdleUserSessions" && aws_cloudwatch_metric_alarm.rotations_failed[0].namespace == "RdsRotator" && aws_cloudwatch_metric_alarm.rotations_failed[0].metric_name == "RotationsFailed"
    error_message = "The alarms are missing."
  }
}

run "existing_cluster_and_settings" {
  command = apply

  variables {
    create_cluster           = false
    cluster_arn              = "arn:aws:ecs:eu-west-1:123456789012:cluster/shared"
    concurrency              = 8
    desired_count            = 3
    min_interval             = "12h"
    shutdown_grace_seconds   = 40
    stop_timeout_seconds     = 60
    db_ca_bundle             = "/etc/ssl/rds-global-bundle.pem"
    cpu_architecture         = "ARM64"
    extra_environment        = { ROTATOR_RETRY_DELAY = "5s" }
    readonly_root_filesystem = false
    binary_path              = "/rds-rotator"
    database_cidr_blocks     = ["10.0.0.0/16"]
    db_ports                 = [5432, 3306]
    create_alarms            = false
  }

  assert {
    condition     = length(aws_ecs_cluster.this) == 0 && aws_ecs_service.this[0].cluster == var.cluster_arn
    error_message = "With create_cluster = false the service must run in cluster_arn."
  }

  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].stopTimeout == 60
      && contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "ROTATOR_SHUTDOWN_GRACE", value = "40s" })
      && contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "ROTATOR_CONCURRENCY", value = "8" })
      && contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "ROTATOR_MIN_INTERVAL", value = "12h" })
      && contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "ROTATOR_DB_CA_BUNDLE", value = "/etc/ssl/rds-global-bundle.pem" })
      && contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "ROTATOR_RETRY_DELAY", value = "5s" })
      # The write quota is shared: 40 / 3 tasks.
      && contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "ROTATOR_SM_WRITE_TPS", value = "13" })
    )
    error_message = "Worker settings are not passed to the container."
  }

  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].readonlyRootFilesystem == false &&
      length(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].mountPoints) == 0 &&
      length(aws_ecs_task_definition.this.volume) == 0 &&
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].healthCheck.command == ["CMD", "/rds-rotator", "health"]
    )
    error_message = "With readonly_root_filesystem = false there must be no /tmp volume; binary_path must reach the health check."
  }

  assert {
    condition     = length(aws_vpc_security_group_egress_rule.database_sg) == 4 && length(aws_vpc_security_group_egress_rule.database_cidr) == 2
    error_message = "Egress rules are not one per (target, port)."
  }

  assert {
    condition     = length(output.alarm_arns) == 0
    error_message = "Alarms exist although create_alarms is false."
  }
}

run "stop_timeout_must_exceed_grace" {
  command = plan

  variables {
    shutdown_grace_seconds = 30
    stop_timeout_seconds   = 30
  }

  expect_failures = [aws_ecs_task_definition.this]
}

run "failpoints_cannot_be_set" {
  command = plan

  variables {
    extra_environment = { ROTATOR_TEST_FAILPOINTS = "before:finish=exit" }
  }

  expect_failures = [var.extra_environment]
}

run "database_must_be_reachable" {
  command = plan

  variables {
    database_security_group_ids = []
  }

  expect_failures = [aws_security_group.this]
}

run "root_user_is_refused" {
  command = plan

  variables {
    container_user = "0:0"
  }

  expect_failures = [var.container_user]
}

# With the Secrets Manager rotation function deployed beside the queue (modules/lambda), the worker
# is told its ARN, so secrets rotated by that function are not refused as "Secrets Manager's own
# rotation is attached". Without one, the variable is not set at all.
run "rotation_function_arns_reach_the_worker" {
  command = apply

  variables {
    rotation_function_arns = [
      "arn:aws:lambda:eu-west-1:123456789012:function:rds-rotator-lambda",
      "arn:aws:lambda:eu-west-1:123456789012:function:rds-rotator-other:live",
    ]
  }

  assert {
    condition = contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, {
      name  = "ROTATOR_ROTATION_FUNCTION_ARNS"
      value = "arn:aws:lambda:eu-west-1:123456789012:function:rds-rotator-lambda,arn:aws:lambda:eu-west-1:123456789012:function:rds-rotator-other:live"
    }) && output.task_environment["ROTATOR_ROTATION_FUNCTION_ARNS"] == join(",", var.rotation_function_arns)
    error_message = "The worker is not given ROTATOR_ROTATION_FUNCTION_ARNS, comma-separated."
  }
}

run "no_rotation_function_no_variable" {
  command = apply

  assert {
    condition     = !contains(keys(output.task_environment), "ROTATOR_ROTATION_FUNCTION_ARNS")
    error_message = "ROTATOR_ROTATION_FUNCTION_ARNS is set although no rotation function is given."
  }
}

run "rotation_function_arns_cannot_be_set_by_hand" {
  command = plan

  variables {
    extra_environment = { ROTATOR_ROTATION_FUNCTION_ARNS = "arn:aws:lambda:eu-west-1:123456789012:function:x" }
  }

  expect_failures = [var.extra_environment]
}

run "rotation_function_arn_must_be_a_function_arn" {
  command = plan

  variables {
    rotation_function_arns = ["rds-rotator-lambda"]
  }

  expect_failures = [var.rotation_function_arns]
}
