# The CloudWatch dashboard: every widget's metric in the worker's namespace is one the worker emits
# (worker-metrics.json, which a Rust test keeps equal to src/metrics.rs), in var.metrics_namespace,
# with the worker's dimensions (none, or Step for StepLatency: CloudWatch matches the exact
# dimension set, so any other would draw an empty graph); the AWS/SQS ones name the module's own
# queues; the grid has no overlapping widgets. A metric entry is [namespace, name, dimension
# name, dimension value, ..., {options}].

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  image       = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-rotator:1.0.0"
  vpc_id      = "vpc-0123456789abcdef0"
  subnet_ids  = ["subnet-0123456789abcdef0"]
  secret_arns = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf"]

  database_security_group_ids = ["sg-0fedcba9876543210"]
}

run "widgets_name_the_workers_metrics_and_the_modules_queues" {
  command = apply

  assert {
    condition     = length(aws_cloudwatch_dashboard.this) == 1 && aws_cloudwatch_dashboard.this[0].dashboard_name == "rds-rotator" && output.dashboard_name == "rds-rotator"
    error_message = "The dashboard is not created by default, named after the deployment."
  }

  # Every namespace is the worker's, SQS's or Lambda's.
  assert {
    condition = alltrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) :
      contains(["RdsRotator", "AWS/SQS", "AWS/Lambda"], m[0])
    ])
    error_message = "A widget uses a namespace other than var.metrics_namespace, AWS/SQS and AWS/Lambda."
  }

  assert {
    condition = alltrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) :
      contains(concat(jsondecode(file("worker-metrics.json")).metrics, jsondecode(file("worker-metrics.json")).step_metrics), m[1])
      if m[0] == "RdsRotator"
    ])
    error_message = "A widget names a metric in the worker's namespace that worker-metrics.json does not list (the worker does not emit it)."
  }

  # The worker's dimensions: none on its per-rotation metrics, exactly Step on StepLatency.
  assert {
    condition = alltrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) :
      contains(jsondecode(file("worker-metrics.json")).step_metrics, m[1])
      ? (length(m) == 5 && m[2] == jsondecode(file("worker-metrics.json")).step_dimension)
      : length(m) == 3
      if m[0] == "RdsRotator"
    ])
    error_message = "A worker metric on the dashboard has dimensions the worker does not emit."
  }

  assert {
    condition = toset([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) : m[3]
      if m[1] == "StepLatency"
    ]) == toset(["create_pending", "set_password", "update_proxy", "test", "finish"])
    error_message = "Step latency does not show every step."
  }

  # AWS/SQS: QueueName is one of the module's own queues.
  assert {
    condition = alltrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) :
      length(m) == 5 && m[2] == "QueueName" && contains([aws_sqs_queue.this.name, aws_sqs_queue.dlq.name], m[3])
      if m[0] == "AWS/SQS"
    ])
    error_message = "An AWS/SQS widget names a queue that is not the module's."
  }

  # The widgets the operators asked for.
  assert {
    condition = one([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w if w.properties.title == "Rotations"]).properties.stat == "Sum" && toset([
      for m in one([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w if w.properties.title == "Rotations"]).properties.metrics : m[1]
    ]) == toset(["RotationsSucceeded", "RotationsFailed", "RotationsIncomplete", "RotationsSkipped", "RotationsAborted"])
    error_message = "The Rotations widget is not the Sum of succeeded, failed, incomplete, skipped and aborted."
  }

  assert {
    condition = toset([
      for m in one([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w if w.properties.title == "Rotation duration"]).properties.metrics : "${m[1]}:${m[2].stat}"
    ]) == toset(["RotationDuration:p50", "RotationDuration:p99"])
    error_message = "The duration widget is not RotationDuration p50 and p99."
  }

  assert {
    condition = (
      one([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w if w.properties.title == "Retries"]).properties.metrics[0][1] == "Retries"
      && toset([for m in one([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w if w.properties.title == "In-use deferrals"]).properties.metrics : m[1]]) == toset(["RotationsDeferred", "IdleUserSessions"])
    )
    error_message = "The retries or in-use deferral widgets are missing."
  }

  assert {
    condition = (
      one([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w if w.properties.title == "Dead-letter queue depth"]).properties.metrics == [
        ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "rds-rotator-dlq", { label = "rds-rotator-dlq: messages", color = "#d62728" }]
      ]
      && toset([for m in one([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w if w.properties.title == "Oldest request age"]).properties.metrics : "${m[1]}:${m[3]}"]) == toset([
        "ApproximateAgeOfOldestMessage:rds-rotator", "ApproximateAgeOfOldestMessage:rds-rotator-dlq",
      ])
    )
    error_message = "The DLQ depth widget is not the DLQ's visible messages, or the age widget not the queue's and the DLQ's oldest message."
  }

  # The grid: 24 columns, no two widgets on the same cell, no Lambda row without functions.
  assert {
    condition = alltrue(flatten([
      for i, a in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : [
        for j, b in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets :
        a.x + a.width <= 24 && (i == j || a.x + a.width <= b.x || b.x + b.width <= a.x || a.y + a.height <= b.y || b.y + b.height <= a.y)
      ]
    ]))
    error_message = "Dashboard widgets overlap or run past column 24."
  }

  assert {
    condition     = length(jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets) == 8
    error_message = "Without rotation functions the dashboard has 8 widgets (5 worker, 3 queue)."
  }
}

run "own_namespace_and_rotation_functions" {
  command = apply

  variables {
    metrics_namespace      = "Platform/Rotator"
    rotation_function_arns = ["arn:aws:lambda:eu-west-1:123456789012:function:rds-rotator-lambda"]
  }

  assert {
    condition = alltrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) :
      m[0] == "Platform/Rotator" || startswith(m[0], "AWS/")
      ]) && length([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) : m
      if m[0] == "Platform/Rotator"
    ]) == 15
    error_message = "The worker's widgets do not use var.metrics_namespace."
  }

  assert {
    condition = alltrue([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) :
      m[2] == "FunctionName" && m[3] == "rds-rotator-lambda"
      if m[0] == "AWS/Lambda"
      ]) && toset([
      for m in concat([for w in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : w.properties.metrics]...) : m[1]
      if m[0] == "AWS/Lambda"
    ]) == toset(["Invocations", "Errors", "Throttles", "Duration"])
    error_message = "The rotation function's widgets do not name the function of rotation_function_arns."
  }

  assert {
    condition = alltrue(flatten([
      for i, a in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets : [
        for j, b in jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets :
        a.x + a.width <= 24 && (i == j || a.x + a.width <= b.x || b.x + b.width <= a.x || a.y + a.height <= b.y || b.y + b.height <= a.y)
      ]
    ])) && length(jsondecode(aws_cloudwatch_dashboard.this[0].dashboard_body).widgets) == 10
    error_message = "With a rotation function the dashboard has 10 widgets, none overlapping."
  }
}

run "dashboard_can_be_turned_off" {
  command = apply

  variables {
    create_dashboard = false
  }

  assert {
    condition     = length(aws_cloudwatch_dashboard.this) == 0 && output.dashboard_name == null
    error_message = "A dashboard exists although create_dashboard is false."
  }
}
