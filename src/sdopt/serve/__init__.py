"""sdopt serve: any artifact behind an HTTP server.

Every API the server speaks (AUTOMATIC1111's ``/sdapi/v1``, OpenAI's Images
API, the native ``/v1/jobs`` and the page at ``/``) turns its request into the
one job type (``jobs.JobSpec``), which the one worker per pipeline
(``worker.Worker``) batches with compatible jobs into a single
``Pipeline.generate`` call. Progress and cancel come from the loop's progress
hook, so they act between denoising steps on every backend.

Modules: ``settings`` (limits and credentials), ``jobs`` (the job and its
events, and the one generate call a batch of jobs makes), ``worker`` (queue,
batching, timeouts, cancel, restart), ``submission`` (request -> job, job ->
HTTP status), ``errors`` (the 4xx a route answers), ``images`` (base64 in and
out), ``auth``, ``metrics`` (Prometheus text), ``app`` (the
FastAPI app, its errors and body limit), one module per API
(``api_native``, ``api_a1111``, ``api_openai``), ``page.html``, and
``server`` (uvicorn). Beside AUTOMATIC1111's API: ``a1111_models`` (its request
models), ``a1111_fields`` (what its fields become, what is ignored),
``api_a1111_lists`` (its listings and options), ``hires`` (the hires fix),
``inpaint_area`` ("Only masked", fill, overlay) and ``resize_modes``
(``resize_mode``); beside OpenAI's: ``image_links`` (signed
``response_format=url`` links); for every API: ``loras`` (``<lora:NAME:W>`` tags
from ``--lora-dir``), ``request_ids`` (``X-Request-ID`` on every answer, in the
access log and the errors logged).
"""
