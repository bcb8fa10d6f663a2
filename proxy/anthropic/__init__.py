"""The Anthropic Messages API (`POST /v1/messages`) over Chat Completions providers (SPEC §4, §6; issue 7).

- `request.py`: a Messages request as a Chat Completions request (`to_chat`, `Capabilities`).
- `request_fields.py`: the request's fields read strictly; `Untranslatable` names the one at fault.
- `response.py`: a Chat Completions answer as a Messages answer.
- `stream.py`: a Chat Completions event stream as Messages stream events.
- `errors.py`: errors in Anthropic's shape, per HTTP status, as a body or an SSE `error` event.
"""
