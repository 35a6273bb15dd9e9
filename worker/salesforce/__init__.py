"""The Salesforce side: REST client, token manager, answer classification, binding, usage."""
