"""moto, made to answer like AWS where it matters to rds-rotator.

Started by scripts/local-stack (unless ROTATOR_MOTO_SHIM=0) with the project venv's Python:

    .venv/bin/python scripts/moto-shim.py -H 127.0.0.1 -p PORT

It imports moto, applies the patches below, and then runs moto's own server main
(moto.server.main: the threaded werkzeug server), so it takes the same arguments and serves the
same API as `moto_server -H 127.0.0.1 -p PORT`. Written against moto 5.2.5 (the version
scripts/local-stack pins); every patched attribute is checked at start, so a moto that moved
things fails loudly instead of running unpatched.

What differs from stock moto (each one checked against moto 5.2.5's code and behaviour):

 1. DynamoDB requests run one at a time (one process-wide lock around every DynamoDB call).
    moto evaluates a ConditionExpression and then writes the item in a second step, and the
    threaded server runs requests in parallel, so two concurrent conditional writes on one item
    can both pass (e.g. two PutItems with attribute_not_exists(pk) both "create" the item). In
    DynamoDB a conditional write is atomic for its item.
 2. PutSecretValue with a ClientRequestToken that is already a version of the secret: with
    other data it fails with ResourceExistsException ("You can't modify an existing version,
    you can only create a new version."); with the same data it succeeds, changes nothing and
    returns that version. moto overwrites a version silently when it holds AWSPENDING (exactly
    the version a rotation writes), and uses its own message for the other versions.
    moto's RotateSecret placeholder (an AWSPENDING version without a value) may still be
    filled in, as moto's own rotation-Lambda flow needs.
 3. The secret's default version is the one labelled AWSCURRENT. moto remembers the version it
    made current itself and does not follow UpdateSecretVersionStage, so after AWSCURRENT moved:
    - GetSecretValue without VersionId and VersionStage returned the old (AWSPREVIOUS) version;
    - PutSecretValue that makes a new AWSCURRENT left AWSCURRENT on the version it had moved
      to, so two versions held AWSCURRENT. It now moves AWSCURRENT to the new version and
      AWSPREVIOUS to the version AWSCURRENT left, and keeps that version's other labels (moto
      replaced all of them with AWSPREVIOUS).
 4. UpdateSecretVersionStage:
    - MoveToVersionId without RemoveFromVersionId, while the label is on another version, fails
      with InvalidParameterException for every label (moto did so only for AWSCURRENT, and for
      other labels attached the label to a second version);
    - moving a label to the version that already holds it changes nothing (moto listed the
      label twice);
    - an unknown MoveToVersionId fails before anything changes (moto had already taken the
      label off RemoveFromVersionId).
    Already right in moto, not patched: RemoveFromVersionId naming a version that does not hold
    the label fails with InvalidParameterException.
 5. Secrets Manager rotation (the stack runs no Lambda):
    - RotateSecret leaves AWSCURRENT where it is and the new version labelled AWSPENDING (with
      the current value), like a rotation whose function created the pending version and has
      not finished. moto moved AWSCURRENT to a new version without a value, so GetSecretValue
      answered ResourceNotFoundException afterwards. RotateSecret while AWSPENDING is on
      another version than AWSCURRENT fails with InvalidRequestException ("A previous rotation
      isn't complete. That rotation will be reattempted."), as in AWS.
    - CancelRotateSecret turns RotationEnabled off and leaves AWSPENDING in place; its answer
      names the AWSPENDING version. moto refused it (InvalidRequestException) on a secret
      without a Lambda.
    - DescribeSecret leaves out RotationLambdaARN when there is no function (moto answered "").
    - RotateSecret with a rotation function (RotationLambdaARN, now or from an earlier call)
      does Secrets Manager's part of a rotation and invokes nothing: it attaches the function
      (RotationEnabled, RotationLambdaARN), refuses as above while a rotation is unfinished, and
      labels AWSPENDING a new version without a value (ClientRequestToken, or a new id), as AWS
      does before it calls createSecret; its answer names that version. Whoever plays Lambda
      invokes the four steps with it (tests/common/lambda.rs). moto looked the function up in
      its own Lambda, ran it there (in Docker, which the stack does not have) and moved
      AWSCURRENT to the new version itself.
    Already right in moto, not patched: RotateSecret with RotationRules sets RotationEnabled
    true in DescribeSecret.
 6. Secrets Manager requests run one at a time too (a second lock), so that every call is
    atomic like in AWS: UpdateSecretVersionStage's RemoveFromVersionId is a compare-and-swap,
    and two PutSecretValue calls with one token cannot both create the version. moto's checks
    and writes are separate steps as in DynamoDB, but with nothing slow between them; 50
    concurrent calls did not show a race on stock moto, so this is a guarantee more than a fix
    (and it keeps the checks patched in above atomic).

 7. RDS Blue/Green switchover takes time, as in AWS: SwitchoverBlueGreenDeployment leaves the
    deployment SWITCHOVER_IN_PROGRESS, and DescribeBlueGreenDeployments shows it so, for the
    SwitchoverTimeout the caller gave (AWS: up to it; 300 s by default), and only then does
    moto's switchover (names moved, SWITCHOVER_COMPLETED). moto switched over at once, and its
    answer alone said SWITCHOVER_IN_PROGRESS.

Everything else is stock moto.
"""

import functools
import sys
import threading
import time

import moto
import moto.server
from moto.dynamodb.responses import DynamoHandler
from moto.secretsmanager import models as sm_models
from moto.secretsmanager.exceptions import (
    InvalidParameterException,
    InvalidRequestException,
    ResourceExistsException,
)
from moto.secretsmanager.models import FakeSecret, SecretsManagerBackend
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.rds.models import RDSBackend

TESTED_MOTO = "5.2.5"

CURRENT, PREVIOUS, PENDING = "AWSCURRENT", "AWSPREVIOUS", "AWSPENDING"


def log(msg):
    print(f"moto-shim: {msg}", file=sys.stderr, flush=True)


def original(cls, name):
    """The attribute to wrap, as the class itself defines it (fails if moto moved it)."""
    if name not in vars(cls):
        raise SystemExit(f"moto-shim: moto {moto.__version__} has no {cls.__name__}.{name}")
    return vars(cls)[name]


def has_value(version):
    return "secret_string" in version or "secret_binary" in version


def label_holder(secret, label):
    """The id of the version that holds `label`, or None."""
    for version_id, version in secret.versions.items():
        if label in version["version_stages"]:
            return version_id
    return None


# --- 1. DynamoDB: one request at a time ---------------------------------------------------------

DYNAMODB_LOCK = threading.Lock()
_dynamo_call_action = original(DynamoHandler, "call_action")


@functools.wraps(_dynamo_call_action)
def dynamo_call_action(self):
    # The whole request (parse, condition check, write, answer) under one lock: a conditional
    # write cannot interleave with another write of the same item.
    with DYNAMODB_LOCK:
        return _dynamo_call_action(self)


DynamoHandler.call_action = dynamo_call_action


# --- 6. Secrets Manager: one request at a time --------------------------------------------------

SECRETS_LOCK = threading.Lock()
# SecretsManagerResponse inherits call_action from BaseResponse.
_sm_call_action = SecretsManagerResponse.call_action


@functools.wraps(_sm_call_action)
def sm_call_action(self):
    # RotateSecret invokes no Lambda inside the request (patch 5), so every call can hold it.
    with SECRETS_LOCK:
        return _sm_call_action(self)


SecretsManagerResponse.call_action = sm_call_action


# --- 2. PutSecretValue: an existing version is never modified -----------------------------------

_put_secret_value = original(SecretsManagerBackend, "put_secret_value")


@functools.wraps(_put_secret_value)
def put_secret_value(
    self, secret_id, secret_string, secret_binary, client_request_token, version_stages
):
    secret = self.secrets.get(secret_id) if self._is_valid_identifier(secret_id) else None
    existing = None
    if isinstance(secret, FakeSecret) and client_request_token:
        existing = secret.versions.get(client_request_token)
    # A version without a value is moto's own RotateSecret placeholder: moto fills it in.
    if existing is not None and has_value(existing):
        if (
            existing.get("secret_string") == secret_string
            and existing.get("secret_binary") == secret_binary
        ):
            # Idempotent retry: nothing changes, the answer names the existing version.
            return secret.to_short_dict(
                include_version_stages=True, version_id=client_request_token
            )
        raise ResourceExistsException(
            "You can't modify an existing version, you can only create a new version."
        )
    return _put_secret_value(
        self, secret_id, secret_string, secret_binary, client_request_token, version_stages
    )


SecretsManagerBackend.put_secret_value = put_secret_value


# --- 3. The default version is the one labelled AWSCURRENT --------------------------------------

original(FakeSecret, "set_default_version_id")  # moto stores default_version_id through it
_reset_default_version = original(FakeSecret, "reset_default_version")


def _get_default_version_id(self):
    return label_holder(self, CURRENT) or self.__dict__.get("_shim_default_version_id")


def _set_default_version_id(self, version_id):
    # Kept for a secret with no AWSCURRENT label anywhere (moto's own fallback).
    self.__dict__["_shim_default_version_id"] = version_id


@functools.wraps(_reset_default_version)
def reset_default_version(self, secret_version, version_id):
    """Makes `version_id` (new) AWSCURRENT, as PutSecretValue/UpdateSecret do in AWS."""
    old = self.default_version_id
    for version in self.versions.values():
        if PREVIOUS in version["version_stages"]:
            version["version_stages"].remove(PREVIOUS)
    if old and old != version_id and old in self.versions:
        stages = self.versions[old]["version_stages"]
        if CURRENT in stages:
            stages.remove(CURRENT)
        stages.append(PREVIOUS)
    self.versions[version_id] = secret_version
    self.default_version_id = version_id


FakeSecret.default_version_id = property(_get_default_version_id, _set_default_version_id)
FakeSecret.reset_default_version = reset_default_version


# --- 4. UpdateSecretVersionStage: AWS's checks, before anything changes --------------------------

_update_secret_version_stage = original(SecretsManagerBackend, "update_secret_version_stage")


@functools.wraps(_update_secret_version_stage)
def update_secret_version_stage(
    self, secret_id, version_stage, remove_from_version_id, move_to_version_id
):
    secret = self.secrets.get(secret_id) if secret_id in self.secrets else None
    if isinstance(secret, FakeSecret) and move_to_version_id:
        if move_to_version_id not in secret.versions:
            raise InvalidParameterException(f"Not a valid version: {move_to_version_id}")
        holder = label_holder(secret, version_stage)
        if not remove_from_version_id:
            if holder == move_to_version_id:
                return secret.arn, secret.name  # already there: nothing to do
            if holder is not None:
                raise InvalidParameterException(
                    f"The parameter RemoveFromVersionId can't be empty. Staging label "
                    f"{version_stage} is currently attached to version {holder}, so you must "
                    "explicitly reference that version in RemoveFromVersionId."
                )
    # moto checks RemoveFromVersionId (it must hold the label) before it changes anything.
    return _update_secret_version_stage(
        self, secret_id, version_stage, remove_from_version_id, move_to_version_id
    )


SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage


# --- 5. Rotation without a rotation function -----------------------------------------------------

_rotate_secret = original(SecretsManagerBackend, "rotate_secret")
_cancel_rotate_secret = original(SecretsManagerBackend, "cancel_rotate_secret")
_to_dict = original(FakeSecret, "to_dict")


@functools.wraps(_rotate_secret)
def rotate_secret(
    self,
    secret_id,
    client_request_token=None,
    rotation_lambda_arn=None,
    rotation_rules=None,
    rotate_immediately=True,
):
    secret = self.secrets.get(secret_id) if self._is_valid_identifier(secret_id) else None
    if (
        not isinstance(secret, FakeSecret)
        or secret.is_deleted()
        or label_holder(secret, CURRENT) is None
    ):
        # A replica, a deleted or an empty secret: moto's own code.
        return _rotate_secret(
            self,
            secret_id,
            client_request_token=client_request_token,
            rotation_lambda_arn=rotation_lambda_arn,
            rotation_rules=rotation_rules,
            rotate_immediately=rotate_immediately,
        )
    days = (rotation_rules or {}).get("AutomaticallyAfterDays")
    if days is not None and not 1 <= days <= 1000:
        raise InvalidParameterException(
            "RotationRules.AutomaticallyAfterDays must be within 1-1000."
        )
    current = label_holder(secret, CURRENT)
    pending = label_holder(secret, PENDING)
    if pending is not None and pending != current:
        raise InvalidRequestException(
            "A previous rotation isn't complete. That rotation will be reattempted."
        )
    if rotation_lambda_arn and len(rotation_lambda_arn) > 2048:
        raise InvalidParameterException("RotationLambdaARN must <= 2048 characters long.")
    function = rotation_lambda_arn or secret.rotation_lambda_arn
    if client_request_token:
        self._client_request_token_validator(client_request_token)
        version_id = client_request_token
    else:
        version_id = str(sm_models.mock_random.uuid4())
    if version_id not in secret.versions:
        secret.remove_version_stages_from_old_versions([PENDING])
        version = {
            "createdate": int(time.time()),
            "version_id": version_id,
            "version_stages": [PENDING],
        }
        if not function:
            # What a rotation function's createSecret step leaves: a new version with AWSPENDING.
            for key in ("secret_string", "secret_binary"):
                if key in secret.versions[current]:
                    version[key] = secret.versions[current][key]
        # With a function: the version AWS makes before it calls createSecret, without a value
        # (GetSecretValue on it answers ResourceNotFoundException; PutSecretValue fills it in).
        secret.versions[version_id] = version
    if function:
        secret.rotation_lambda_arn = function
        secret.rotation_enabled = True
    secret.rotation_requested = True
    if rotation_rules:
        secret.auto_rotate_after_days = days or 0
        if days is not None:
            secret.next_rotation_date = int(time.time()) + days * 86400
        secret.rotation_enabled = True
    return secret.to_short_dict(version_id=version_id)


@functools.wraps(_cancel_rotate_secret)
def cancel_rotate_secret(self, secret_id):
    secret = self.secrets.get(secret_id) if self._is_valid_identifier(secret_id) else None
    if (
        isinstance(secret, FakeSecret)
        and not secret.is_deleted()
        and secret.rotation_requested
        and not secret.rotation_lambda_arn
    ):
        # Rotation is turned off; a started rotation's AWSPENDING version stays.
        secret.rotation_enabled = False
        return secret.to_short_dict(version_id=label_holder(secret, PENDING))
    return _cancel_rotate_secret(self, secret_id)


@functools.wraps(_to_dict)
def to_dict(self):
    dct = _to_dict(self)
    if dct.get("RotationLambdaARN") == "":
        del dct["RotationLambdaARN"]
    return dct


SecretsManagerBackend.rotate_secret = rotate_secret
SecretsManagerBackend.cancel_rotate_secret = cancel_rotate_secret
FakeSecret.to_dict = to_dict


# 7. Blue/Green switchovers that take time.
_switchover_blue_green = original(RDSBackend, "switchover_blue_green_deployment")
_describe_blue_green = original(RDSBackend, "describe_blue_green_deployments")
SWITCHOVERS = {}  # deployment identifier -> monotonic time its switchover ends


def switchover_blue_green_deployment(
    self, blue_green_deployment_identifier, switchover_timeout=300, **kwargs
):
    bg = self.blue_green_deployments.get(blue_green_deployment_identifier)
    if bg is None or bg.status != "AVAILABLE":
        # moto's own refusals (not found, not available).
        return _switchover_blue_green(
            self, blue_green_deployment_identifier, switchover_timeout, **kwargs
        )
    bg.set_status(bg.SupportedStates.SWITCHOVER_IN_PROGRESS)
    SWITCHOVERS[blue_green_deployment_identifier] = time.monotonic() + float(
        switchover_timeout or 300
    )
    return bg


def describe_blue_green_deployments(self, *args, **kwargs):
    now = time.monotonic()
    for ident, ends in list(SWITCHOVERS.items()):
        bg = self.blue_green_deployments.get(ident)
        if bg is None:
            del SWITCHOVERS[ident]
        elif now >= ends:
            del SWITCHOVERS[ident]
            bg.set_status(bg.SupportedStates.AVAILABLE)
            _switchover_blue_green(self, ident)
    return _describe_blue_green(self, *args, **kwargs)


RDSBackend.switchover_blue_green_deployment = switchover_blue_green_deployment
RDSBackend.describe_blue_green_deployments = describe_blue_green_deployments


def main():
    if moto.__version__ != TESTED_MOTO:
        log(f"warning: written for moto {TESTED_MOTO}, running on moto {moto.__version__}")
    log(f"moto {moto.__version__} patched (scripts/moto-shim.py lists the differences)")
    moto.server.main(sys.argv[1:])


if __name__ == "__main__":
    main()
