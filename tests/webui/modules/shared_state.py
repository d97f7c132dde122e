"""modules/shared_state.py stand-in: the job/interrupt state (`shared.state`)."""
from __future__ import annotations

import datetime
import logging
import threading
import time

log = logging.getLogger(__name__)


class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = '0'
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    current_image = None
    current_image_sampling_step = 0
    id_live_preview = 0
    textinfo = None
    time_start = None
    server_start = None
    _server_command_signal = threading.Event()
    _server_command = None

    def __init__(self):
        self.server_start = time.time()

    def _request(self, flag, what):
        setattr(self, flag, True)
        log.info("Received %s request", what)

    def interrupt(self):
        self._request("interrupted", "interrupt")

    def stop_generating(self):
        self._request("stopping_generation", "stop generating")

    def skip(self):
        self._request("skipped", "skip")

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = self.current_image_sampling_step = 0

    _DICT_KEYS = ("skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
                  "sampling_step", "sampling_steps")

    def dict(self):
        return {key: getattr(self, key) for key in self._DICT_KEYS}

    def begin(self, job: str = "(unknown)"):
        self.job, self.job_no, self.job_count = job, 0, -1  # -1: processing fills in the real count
        self.time_start = time.time()
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.processing_has_refined_job_count = False
        self.sampling_step = self.current_image_sampling_step = self.id_live_preview = 0
        self.current_latent = self.current_image = self.textinfo = None
        self.skipped = self.interrupted = self.stopping_generation = False
        log.info("Starting job %s", job)

    def end(self):
        duration = time.time() - (self.time_start or time.time())
        log.info("Ending job %s (%.2f seconds)", self.job, duration)
        self.job, self.job_count = "", 0

    def set_current_image(self):
        pass

    def assign_current_image(self, image):
        self.current_image = image
