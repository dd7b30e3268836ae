"""The routes: /v1/segment, rembg's /api/remove, /health, /v1/models, the page at /, the Krita
plug-in zip; every error as {"error": "<one line>"} with a 4xx status (5xx only for server faults)."""

from __future__ import annotations

import asyncio
import io
import threading
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..errors import OutOfMemory, first_line
from ..highres import DEFAULT_FINE_MEGAPIXELS
from ..inference import mask_to_image, model_device, with_colour_profile
from ..pass_clock import pass_shares
from ..pipeline import cutout_image, finish, segment_image
from ..stopping import checks_inside
from ..version import __version__
from ..zoo import listed
from .errors import ClientLeft, RequestError
from .gate import SegmentGate
from .progress import Progress, check_request_id
from .security import RequestGuard, SiteGuard
from .settings import Settings
from .uploads import Job, check_fields, decode_image, parse_job
from .worker import Worker

SEGMENT_FIELDS = (
    "image",
    "output",
    "weights",
    "resolution",
    "box",
    "black_point",
    "white_point",
    "threshold",
    "fill_holes",
    "grow",
    "guided_radius",
    "guided_eps",
    "feather",
    "foreground",
    "foreground_radius",
    "highres",
    "fine_megapixels",
)
REQUEST_ID_HEADER = "X-Request-ID"  # names a request for GET /v1/progress/{request_id}
REMBG_FIELDS = ("file", "model", "a", "af", "ab", "ae", "om", "ppm", "bgc", "extras")
REMBG_URL_OPTIONS = ("bgc", "extras")  # rembg's POST reads these two from the URL, not the form
PNG = {200: {"content": {"image/png": {}}, "description": "the PNG"}}


def segment_job(job: Job, model, left: threading.Event, progress: Progress):
    """Runs in the model's thread: the same calls `birefnet segment` makes, with `progress` moved along (within
    CPU passes too: `pass_shares`). Once the client has left (`left` set), the work stops at its next check:
    between passes, before the refinement, and inside a CPU forward pass (`checks_inside`), so the requests
    behind it wait a second or so, not the rest of its work."""

    def check() -> None:
        if left.is_set():
            raise ClientLeft()

    def after_pass(done: int, total: int) -> None:
        check()
        progress.work.pass_done(done, total)

    progress.start(passes=2 if job.highres else max(len(job.boxes), 1))
    with checks_inside(model, check), pass_shares(model, progress.work.in_pass):
        mask, _ = segment_image(
            model,
            job.image,
            boxes=job.boxes,
            resolution=job.resolution,
            highres=job.highres,
            fine_megapixels=job.fine_megapixels,
            callback=after_pass,
        )
        check()
        return finish(job.image, mask, job.refinement, boxes=job.boxes, device=model_device(model))


def png_bytes(job: Job, mask, colours) -> bytes:
    picture = mask_to_image(mask) if job.output == "mask" else cutout_image(job.image, mask, colours)
    if job.background is not None and job.output == "rgba":  # rembg's bgc, laid under the cut-out as rembg does
        backdrop = Image.new("RGBA", picture.size, job.background)
        picture = with_colour_profile(Image.alpha_composite(backdrop, picture), picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def create_app(settings: Settings, worker: Worker) -> FastAPI:
    app = FastAPI(
        title="BiRefNet server",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        description="Background removal and object masks for image editors and scripts. "
        'Every error is JSON {"error": "..."}.',
    )

    async def answer(request: Request, upload: UploadFile, url_options=(), **options) -> Response:
        """The PNG for the uploaded image and `options` (`parse_job`'s). Options in the URL other than
        `url_options` are refused (they would be ignored); a place in the line is taken before the image is
        decoded, so a full line refuses the request before it costs memory. A request whose client goes
        away while it waits (Krita's Cancel, a closed tab, a killed script) leaves the line and never runs; one whose
        client leaves while the model works on it stops within a second or so (`segment_job`), as does one the
        server cancels as it stops (Ctrl+C or SIGTERM, once requests in flight have had their grace time).
        Sent with an X-Request-ID header, GET /v1/progress/{that id} tells how far it is until it is answered (a
        header, not a form field: servers from before it ignore it, where they would refuse an unknown field)."""
        check_query(request, url_options)
        request_id = request.headers.get(REQUEST_ID_HEADER)
        if request_id is None:
            return await take_place(request, upload, options, Progress())
        request_id = check_request_id(request_id)
        progress = worker.progress.add(request_id)
        try:
            return await take_place(request, upload, options, progress)
        finally:
            worker.progress.remove(request_id)

    async def take_place(request: Request, upload: UploadFile, options: dict, progress: Progress) -> Response:
        async with worker.place():
            left = threading.Event()
            work = asyncio.ensure_future(segment_upload(upload, options, left, progress))
            gone = asyncio.ensure_future(client_gone(request))
            finished = stopping = False
            try:
                await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
                finished = work.done()
            except asyncio.CancelledError:  # the server is stopping and its grace time for requests is over
                stopping = True
            finally:  # the work must not outlive its request
                gone.cancel()
                if not finished:
                    left.set()
                    work.cancel()
            if stopping:
                raise RequestError(503, "the server is stopping; send the request again once it is back")
            if not finished:
                return Response(status_code=499)  # nobody reads it (nginx's code for a client that left)
            return work.result()

    async def segment_upload(upload: UploadFile, options: dict, left: threading.Event, progress: Progress) -> Response:
        """Decoded in its turn (only the first requests in line hold a decoded image), then segmented."""
        async with worker.turn():
            job = parse_job(await read_image(upload), **options)
            try:
                mask, colours = await worker.run(lambda model: segment_job(job, model, left, progress), job.weights)
            except ValueError as err:  # the library's one-line errors about this image and its options
                raise RequestError(400, first_line(err)) from None
            except OutOfMemory as err:  # this request was too large for the GPU now; smaller ones still run
                raise RequestError(503, first_line(err)) from None
            return Response(await run_in_threadpool(png_bytes, job, mask, colours), media_type="image/png")

    async def read_image(upload: UploadFile):
        # in the thread pool: decoding a large photo takes a while, and /health must answer meanwhile
        return await run_in_threadpool(decode_image, await upload.read(), settings.max_pixels)

    @app.post("/v1/segment", responses=PNG, response_class=Response)
    async def segment(
        request: Request,
        image: Annotated[
            UploadFile, File(description="PNG, JPEG, WebP, AVIF, TIFF, BMP, GIF; HEIC with the pictures extra")
        ],
        output: Annotated[str, Form(description="mask (8-bit grey PNG) or rgba (cut-out PNG)")] = "mask",
        weights: Annotated[str | None, Form(description="weights the server offers (/v1/models)")] = None,
        resolution: Annotated[str, Form(description="native, 1024, WIDTHxHEIGHT or aspect")] = "native",
        box: Annotated[list[str], Form(description="X,Y,W,H in pixels; repeat for several objects")] = [],
        black_point: Annotated[float, Form()] = 0.0,
        white_point: Annotated[float, Form()] = 1.0,
        threshold: Annotated[float, Form(description="0 keeps the mask soft")] = 0.0,
        fill_holes: Annotated[bool, Form()] = False,
        grow: Annotated[int, Form(description="pixels; negative shrinks")] = 0,
        guided_radius: Annotated[int, Form(description="0 = off")] = 0,
        guided_eps: Annotated[float, Form()] = 1e-3,
        feather: Annotated[float, Form()] = 0.0,
        foreground: Annotated[bool, Form(description="rgba: re-estimated foreground colours")] = False,
        foreground_radius: Annotated[int, Form()] = 90,
        highres: Annotated[bool, Form(description="coarse to fine, for images far above the working size")] = False,
        fine_megapixels: Annotated[float, Form(description="working area of the fine pass")] = DEFAULT_FINE_MEGAPIXELS,
    ):
        """The mask (or cut-out) `birefnet segment` writes for this image and these options."""
        check_fields([name for name, _ in (await request.form()).multi_items()], SEGMENT_FIELDS, ("box",))
        box = [text for text in box if text]  # an empty field means its default, as for every other field
        refinement = dict(
            black_point=black_point,
            white_point=white_point,
            threshold=threshold,
            fill_holes=fill_holes,
            grow=grow,
            guided_radius=guided_radius,
            guided_eps=guided_eps,
            feather=feather,
            foreground=foreground,
            foreground_radius=foreground_radius,
        )
        return await answer(
            request,
            image,
            output=output,
            weights=weights,
            resolution=resolution,
            boxes=box,
            refinement=refinement,
            highres=highres,
            fine_megapixels=fine_megapixels,
        )

    @app.post("/api/remove", responses=PNG, response_class=Response)
    async def remove(
        request: Request,
        file: Annotated[UploadFile, File(description="the image")],
        om: Annotated[bool, Form(description="only the mask")] = False,
        model: Annotated[str | None, Form(description="accepted and ignored: the server's model answers")] = None,
    ):
        """rembg's server API: the cut-out, or the mask with om=true. As rembg does, it reads `bgc` (R,G,B,A:
        the cut-out laid on that colour) and `extras` (ignored) from the URL; the form's other rembg fields
        (a, af, ab, ae, ppm; bgc and extras, which rembg does not read there either) are accepted and ignored."""
        check_fields([name for name, _ in (await request.form()).multi_items()], REMBG_FIELDS)
        return await answer(
            request,
            file,
            url_options=REMBG_URL_OPTIONS,
            output="mask" if om else "rgba",
            weights=None,
            resolution="native",
            boxes=[],
            refinement={},
            background=request.query_params.get("bgc"),
        )

    @app.get("/api/remove", include_in_schema=False)
    async def remove_by_url():
        raise RequestError(400, "this server never fetches URLs; POST the image as the multipart field `file`")

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": worker.name,
            "device": str(worker.device),
            "dtype": str(worker.dtype).removeprefix("torch."),
            "backend": worker.backend,
            "version": __version__,
            "waiting": worker.waiting,
        }

    @app.get("/v1/progress/{request_id}")
    async def progress(request_id: str):
        """How far the request sent with this X-Request-ID is: state "waiting" (in line) or "running", and progress
        from 0 to 1 (the passes through the network, within a pass on a CPU too; then the refinement). 404 once
        it is answered."""
        return worker.progress.report(request_id)

    @app.get("/v1/models")
    async def models():
        return {
            "loaded": worker.name,
            "offered": worker.catalog.names(),
            "known": [{"name": k.name, "short": k.short, "downloaded": downloaded(k)} for k in listed()],
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/krita-plugin.zip", responses={200: {"content": {"application/zip": {}}}}, response_class=Response)
    async def krita_plugin():
        """The Krita plug-in, ready for Krita's Tools > Scripts > Import Python Plugin from File."""
        from ..krita_plugin import ZIP_NAME, zip_bytes

        try:
            data = zip_bytes()
        except FileNotFoundError as err:
            raise RequestError(404, str(err)) from None
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{ZIP_NAME}"'},
        )

    @app.exception_handler(RequestError)
    async def request_error(_, err: RequestError):
        return error(err.status, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_field(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        if field in ("image", "file"):
            return missing_image(request, field, first.get("type") == "missing", err.body)
        return error(400, f"field {field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        if err.status_code == 405:
            allowed = err.headers.get("Allow", "") if err.headers else ""
            message = f"{request.method} {request.url.path} is not served; use {allowed or 'GET or POST'}"
            return error(405, message, {"Allow": allowed} if allowed else None)  # HTTP asks a 405 to say it
        if err.status_code == 404:
            return error(404, f"no such endpoint: {request.method} {request.url.path}")
        return error(err.status_code, err.detail)

    @app.exception_handler(Exception)
    async def server_fault(_, err: Exception):
        return error(500, f"internal error: {type(err).__name__}: {first_line(err)}")

    answer_head_as_get(app)
    app.add_middleware(SegmentGate, worker=worker)
    add_guards(app, settings)
    return app


def answer_head_as_get(app: FastAPI) -> None:
    """HEAD where GET is served (health checkers, `curl -I`): the same status and headers, no body (uvicorn
    sends none for HEAD). FastAPI's GET routes answer only GET; the HEAD routes stay out of /openapi.json."""
    for route in list(app.routes):
        if isinstance(route, APIRoute) and "GET" in route.methods:
            app.add_api_route(
                route.path,
                route.endpoint,
                methods=["HEAD"],
                response_class=route.response_class,
                include_in_schema=False,
                name=route.name,
            )


def missing_image(request: Request, field: str, missing: bool, form) -> JSONResponse:
    """The request has no image file in `field`: say what it sent instead (the body as a raw image or JSON,
    the image under another field's name, a text field) and how to send it."""
    upload = f"curl: -F {field}=@photo.png"
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind and kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return error(
            415, f"the body is {kind}; send a multipart/form-data form with the image as file field {field} ({upload})"
        )
    if not missing:  # a text field, not a file
        return error(400, f"field {field}: send the image as a file upload ({upload})")
    sent = sorted(form.keys()) if isinstance(form, FormData) else []
    if field in sent:  # sent empty, which counts as not sent (`-F image=` without the @)
        return error(400, f"field {field} is empty: send the image as a file upload ({upload})")
    return error(
        400,
        f"field {field} is missing: send the image as file field {field} ({upload})"
        + (f"; this request sent {', '.join(sent)}" if sent else ""),
    )


async def client_gone(request: Request) -> None:
    """Returns once the client has closed its connection."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def check_query(request: Request, allowed=()) -> None:
    """Options belong in the form (but `allowed`): ones in the URL would otherwise be ignored without a word."""
    unread = set(request.query_params.keys()) - set(allowed)
    if unread:
        names = ", ".join(sorted(unread))
        raise RequestError(400, f"options in the URL ({names}) are not read; send them as form fields")


def add_guards(app: FastAPI, settings: Settings) -> None:
    """Outermost first: SiteGuard (Host, Origin), CORSMiddleware (preflights, CORS headers), RequestGuard
    (token, upload size), then SegmentGate (added before them: a full line, a form cut short): an allowed page
    then reads the 401/411/413/503 it gets, and a foreign page's preflight is a 403 like its request. The
    middleware added last runs first."""
    app.add_middleware(RequestGuard, settings=settings)
    if settings.cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", REQUEST_ID_HEADER],
        )
    app.add_middleware(SiteGuard, settings=settings)


def downloaded(known) -> bool:
    from ..hub import cached_file

    try:
        return cached_file(known) is not None
    except ValueError:  # huggingface_hub is not installed: nothing can have been downloaded through it
        return False
