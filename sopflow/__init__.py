"""sopflow: client-lifecycle SOPs run as durable Temporal workflows.

Shared domain code lives here (playbook schema, pure lifecycle logic, configuration and database models), so that
workflows, activities and starters depend on one small package and never on each other.
"""
