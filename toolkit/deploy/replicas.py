"""serve past one process: `xtk serve --engine ray` runs the FastAPI app of toolkit.deploy.serve (make_app) as a
Ray Serve deployment of N replicas, each holding its own engine, behind the one HTTP address of Ray Serve's proxy,
which sends each request to the less busy of two replicas. Ray Serve does the balancing, the health checks and
the restarts; each replica answers exactly as `xtk serve` does (docs/scaling.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from toolkit.deploy.cluster import ray_cluster
from toolkit.deploy.predict import student_backend
from toolkit.deploy.serve import Limits, make_app
from toolkit.io.errors import StageError
from toolkit.task.recipe import Recipe

APP = "xtk"  # the Ray Serve application's name: the one `xtk serve --engine ray` deploys and deletes

# Requests a replica takes at once. Ray Serve's default (5) would leave the rest waiting in its proxy, where no
# deadline applies: with this, each request reaches a replica at once and waits in that replica's own queue,
# whose --queue-timeout answers 503, and the engine can batch as many as eval.batch_size together.
ONGOING = 10_000


class Replica:
    """One replica: an engine (built as predict builds it), and the app around it that Ray Serve asks for once the
    replica is built (its ingress wrapper keeps the app as the read-only `app`)."""

    def __init__(self, recipe: Recipe, r, limits: Limits):
        self.recipe, self.r, self.limits = recipe, r, limits
        self.backend = student_backend(recipe, r, online=True)

    def __serve_build_asgi_app__(self):
        return make_app(self.recipe, self.backend, self.r, self.limits)

    def __del__(self):  # Ray Serve calls it when it stops the replica
        self.backend.close()


def application(recipe: Recipe, r, limits: Limits, replicas: int, gpus: bool):
    """The Ray Serve application: `replicas` Replicas, each holding a GPU where the cluster has them, else a CPU;
    each drains for up to limits.drain_seconds when stopped."""
    from ray import serve

    deployment = serve.deployment(
        serve.ingress()(Replica), name="xtk-serve", num_replicas=replicas, max_ongoing_requests=ONGOING,
        ray_actor_options={"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1},
        graceful_shutdown_timeout_s=limits.drain_seconds)
    return deployment.bind(recipe, r, limits)


@contextmanager
def ray_serving(recipe: Recipe, r, limits: Limits, host: str, port: int, address: str | None,
                replicas: int | None) -> Iterator[int]:
    """Serve on http://host:port until the block ends, with `replicas` engines (default: one per GPU of the
    cluster, else 1); yields their number once every replica answers. At the end the app is deleted (each replica
    drains for up to limits.drain_seconds). `address` joins a running cluster, whose Serve keeps running; none
    starts a local cluster for the block (or joins the one `ray start` left here, as ray.init does). Ray Serve's
    proxy listens on the head node only: one address."""
    import ray
    from ray import serve

    with ray_cluster(address):
        have = ray.cluster_resources()
        gpus = int(have.get("GPU", 0))
        n = replicas or gpus or 1
        unit = "GPU" if gpus else "CPU"
        if n > have.get(unit, 0):  # Ray would wait for them for ever
            raise StageError(f"--replicas {n}: each replica takes one {unit} and the Ray cluster has "
                             f"{have.get(unit, 0):g}")
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
        try:
            serve.run(application(recipe, r, limits, n, gpus > 0), name=APP, route_prefix="/")  # once all answer
            yield n
        finally:
            serve.delete(APP)
