################################################################################
# CloudWatch dashboard: the worker's metrics, the queue and the DLQ, and the
# rotation functions named in rotation_function_arns (they write the same
# metrics into the same namespace, so one dashboard shows both deployments).
# The body is rendered by modules/dashboard, which modules/lambda uses too.
################################################################################

locals {
  rotation_function_names = [for arn in var.rotation_function_arns : regex(":function:([^:]+)", arn)[0]]
}

module "dashboard_body" {
  source = "./modules/dashboard"

  region            = local.region
  metrics_namespace = var.metrics_namespace
  queue_name        = aws_sqs_queue.this.name
  dlq_name          = aws_sqs_queue.dlq.name
  function_names    = local.rotation_function_names
}

resource "aws_cloudwatch_dashboard" "this" {
  count = var.create_dashboard ? 1 : 0

  dashboard_name = var.name
  dashboard_body = module.dashboard_body.body
}
