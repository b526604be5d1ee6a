terraform {
  # No provider: this module only renders the dashboard body; its callers own the resource.
  required_version = ">= 1.7"
}
