terraform {
  # mock_provider in tests/ needs 1.7; nothing in the module needs more.
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws_secretsmanager_secret_rotation.rotate_immediately is in 5.33 and later.
      version = ">= 5.33, < 6.0"
    }
  }
}
