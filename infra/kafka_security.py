"""The Kafka connection settings every client shares: bootstrap servers plus security (TLS, SASL) for a managed or
secured cluster. kafka-python's producers, consumers and admin clients take ``client_config``; Spark's Kafka source and
sink take ``spark_options`` (the Java client's names, prefixed ``kafka.``).

The local broker of ``lakeloop up`` listens in PLAINTEXT on loopback; a cluster reached beyond it should use SSL or
SASL_SSL (docs/SECURITY.md). A SASL password is a ``SecretStr``: it is read from the environment or lakeloop.toml and
never printed.
"""

from __future__ import annotations

from typing import Any

from infra.errors import ConfigError
from infra.secrets import reveal
from infra.settings import Settings

_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS = ("SSL", "SASL_SSL")


def check(settings: Settings) -> None:
    """Raise ConfigError naming the missing setting when the security settings cannot make a connection."""
    protocol = settings.kafka_security_protocol
    if protocol in _SASL:
        missing = [name for name, value in (("LAKELOOP_KAFKA_SASL_MECHANISM", settings.kafka_sasl_mechanism),
                                            ("LAKELOOP_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                                            ("LAKELOOP_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password)) if not value]
        if missing:
            raise ConfigError(f"kafka_security_protocol {protocol} needs {', '.join(missing)}",
                              hint="set them (the password from your secret store), or pick the protocol your cluster uses")
    elif settings.kafka_sasl_mechanism or settings.kafka_sasl_username or settings.kafka_sasl_password:
        raise ConfigError(f"SASL settings are set but kafka_security_protocol is {protocol}: they would be ignored",
                          hint="set LAKELOOP_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT), or unset the SASL settings")
    files = {"kafka_ssl_cafile": settings.kafka_ssl_cafile, "kafka_ssl_certfile": settings.kafka_ssl_certfile,
             "kafka_ssl_keyfile": settings.kafka_ssl_keyfile}
    if protocol not in _TLS and any(files.values()):
        raise ConfigError(f"TLS files are set but kafka_security_protocol is {protocol}: they would be ignored",
                          hint="set LAKELOOP_KAFKA_SECURITY_PROTOCOL=SSL (or SASL_SSL), or unset the kafka_ssl_* settings")
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"{name} {path} is not a readable file", hint=f"fix LAKELOOP_{name.upper()}")
    if bool(settings.kafka_ssl_certfile) != bool(settings.kafka_ssl_keyfile):
        raise ConfigError("a client certificate needs both kafka_ssl_certfile and kafka_ssl_keyfile",
                          hint="set both, or neither (server-only TLS)")


def client_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of kafka-python's KafkaProducer / KafkaConsumer / KafkaAdminClient for these settings."""
    check(settings)
    cfg: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return cfg
    cfg["security_protocol"] = protocol
    if protocol in _SASL:
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        cfg["sasl_plain_username"] = settings.kafka_sasl_username
        cfg["sasl_plain_password"] = reveal(settings.kafka_sasl_password)
    if protocol in _TLS:
        cfg["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for key, path in (("ssl_cafile", settings.kafka_ssl_cafile), ("ssl_certfile", settings.kafka_ssl_certfile),
                          ("ssl_keyfile", settings.kafka_ssl_keyfile)):
            if path is not None:
                cfg[key] = str(path)
        if settings.kafka_ssl_key_password is not None:
            cfg["ssl_password"] = reveal(settings.kafka_ssl_key_password)
    return cfg


_JAAS = {"PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
         "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
         "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule"}


def spark_options(settings: Settings) -> dict[str, str]:
    """Options of Spark's Kafka source/sink (``.option(k, v)``) for these settings: the Java client's names."""
    check(settings)
    opts = {"kafka.bootstrap.servers": settings.bootstrap_servers}
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return opts
    opts["kafka.security.protocol"] = protocol
    if protocol in _SASL:
        mechanism = str(settings.kafka_sasl_mechanism)
        user = _jaas_quote(str(settings.kafka_sasl_username))
        password = _jaas_quote(settings.kafka_sasl_password.get_secret_value())  # type: ignore[union-attr]
        opts["kafka.sasl.mechanism"] = mechanism
        opts["kafka.sasl.jaas.config"] = f'{_JAAS[mechanism]} required username="{user}" password="{password}";'
    if protocol in _TLS:
        if settings.kafka_ssl_cafile is not None:
            opts["kafka.ssl.truststore.type"] = "PEM"
            opts["kafka.ssl.truststore.location"] = str(settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile is not None and settings.kafka_ssl_keyfile is not None:
            # the Java client's PEM key store takes one file holding the private key and its certificate chain
            opts["kafka.ssl.keystore.type"] = "PEM"
            opts["kafka.ssl.keystore.certificate.chain"] = settings.kafka_ssl_certfile.read_text()
            opts["kafka.ssl.keystore.key"] = settings.kafka_ssl_keyfile.read_text()
            if settings.kafka_ssl_key_password is not None:
                opts["kafka.ssl.key.password"] = reveal(settings.kafka_ssl_key_password)
        if not settings.kafka_ssl_check_hostname:
            opts["kafka.ssl.endpoint.identification.algorithm"] = ""
    return opts


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
