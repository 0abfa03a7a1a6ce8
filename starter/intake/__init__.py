"""The webhook intake's endpoints, one module per sender (HubSpot, DocuSign, web forms) and the probes.

`starter.webhooks.create_app` assembles them into a FastAPI app. What a request needs from the app (settings,
Temporal client, records database) comes through the dependencies of `starter.intake.dependencies`; what every
endpoint shares (answers, bodies, Temporal calls, the mapping and playbooks) is `starter.intake.context`. The form
pages' markup is in `templates/_intake/`.
"""
