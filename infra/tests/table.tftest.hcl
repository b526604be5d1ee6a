# (2) The table has exactly the binary's key schema (`rds-rotator setup` creates the same and the
# worker refuses any other): one hash key, secret_arn, of type S; no range key, no indexes.

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

run "key_schema_is_the_binarys" {
  command = apply

  assert {
    condition     = aws_dynamodb_table.this.hash_key == "secret_arn"
    error_message = "The table's hash key is not secret_arn."
  }

  assert {
    condition     = aws_dynamodb_table.this.range_key == null
    error_message = "The table has a range key; the binary's key schema is the hash key alone."
  }

  assert {
    condition     = length(aws_dynamodb_table.this.attribute) == 1
    error_message = "The table defines more than one attribute; only the key attribute secret_arn belongs in the schema."
  }

  assert {
    condition = alltrue([
      for a in aws_dynamodb_table.this.attribute : a.name == "secret_arn" && a.type == "S"
    ])
    error_message = "The key attribute is not secret_arn of type S (string)."
  }

  assert {
    condition     = length(aws_dynamodb_table.this.global_secondary_index) == 0 && length(aws_dynamodb_table.this.local_secondary_index) == 0
    error_message = "The table has secondary indexes; the binary's schema has none."
  }

  assert {
    condition     = aws_dynamodb_table.this.billing_mode == "PAY_PER_REQUEST"
    error_message = "The table is not PAY_PER_REQUEST."
  }

  assert {
    condition     = aws_dynamodb_table.this.point_in_time_recovery[0].enabled
    error_message = "Point-in-time recovery is off."
  }

  assert {
    condition     = aws_dynamodb_table.this.server_side_encryption[0].enabled
    error_message = "Server-side encryption is off."
  }

  assert {
    condition     = aws_dynamodb_table.this.deletion_protection_enabled
    error_message = "Deletion protection is off by default."
  }

  assert {
    condition     = aws_dynamodb_table.this.name == "rds-rotator" && output.table_name == "rds-rotator"
    error_message = "The default table name is not the binary's default, rds-rotator."
  }
}

run "custom_name_cmk_and_no_deletion_protection" {
  command = apply

  variables {
    table_name                = "rotator-leases"
    table_deletion_protection = false
    kms_key_arn               = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  }

  assert {
    condition = (
      aws_dynamodb_table.this.name == "rotator-leases"
      && aws_dynamodb_table.this.hash_key == "secret_arn"
      && aws_dynamodb_table.this.range_key == null
      && length(aws_dynamodb_table.this.attribute) == 1
      && one(aws_dynamodb_table.this.attribute).type == "S"
    )
    error_message = "A custom table name changed the key schema."
  }

  assert {
    condition     = aws_dynamodb_table.this.server_side_encryption[0].kms_key_arn == var.kms_key_arn && !aws_dynamodb_table.this.deletion_protection_enabled
    error_message = "kms_key_arn or table_deletion_protection is not applied."
  }

  assert {
    condition     = one([for e in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment : e.value if e.name == "ROTATOR_TABLE"]) == "rotator-leases"
    error_message = "The worker is not told the table's name (ROTATOR_TABLE)."
  }
}
