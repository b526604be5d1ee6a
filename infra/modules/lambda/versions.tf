terraform {
  # mock_provider in tests/ needs 1.7; nothing in the module needs more.
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}
