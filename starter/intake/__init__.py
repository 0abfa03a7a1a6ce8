"""The webhook intake's endpoints, one module per sender (HubSpot, DocuSign, web forms) over a shared context.

`starter.webhooks` assembles them into the FastAPI app; everything a request needs (settings, records database,
Temporal client, intake mapping, playbooks) is reached through `starter.intake.context`, so tests and the dev stack
can hand the app their own.
"""
