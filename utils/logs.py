"""The toolkit's loggers ("pixelfade.*") and their handlers across runs in one process."""
import logging

ROOT_LOGGER = "pixelfade"


def close_log_handlers(name=ROOT_LOGGER):
    """Detach and close a run's log handlers, so its log file is closed and a later run starts clean."""
    log = logging.getLogger(name)
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
