"""The Python client against live `ember serve` and `ember ps` processes, TLS and tokens on.

tests/python_client.rs starts the processes and runs this with unittest; it passes what it made
through the environment:
  EMBER_TEST_SERVING     a serving node (TLS, role tokens) serving a DeepFM trained on Criteo-like rows
  EMBER_TEST_ROWS        hold-out rows in that format (label first)
  EMBER_TEST_EXPECTED    `ember predict`'s probabilities of those rows, one per line
  EMBER_TEST_PS          two ps-servers (TLS, role tokens), comma-separated, slots round-robin
  EMBER_TEST_LOOKUPS     JSON {"table", "keys", "rows"}: what the Rust client looked up there
  EMBER_TEST_CA          the CA of every server's certificate
  EMBER_TEST_TOKENS      the servers' token file (ROLE TOKEN per line)
"""

import json
import os
import unittest

import grpc

from ember import EmberError, Predictor, PsClient, slot_of

ENV = os.environ


def tokens():
    with open(ENV["EMBER_TEST_TOKENS"]) as f:
        return dict(line.split() for line in f if line.strip())


def rows():
    with open(ENV["EMBER_TEST_ROWS"]) as f:
        return [line.rstrip("\n").split("\t")[1:] for line in f if line.strip()]


class PredictorTest(unittest.TestCase):
    def setUp(self):
        self.tokens = tokens()
        self.p = Predictor(ENV["EMBER_TEST_SERVING"], token=self.tokens["serving"], ca=ENV["EMBER_TEST_CA"])

    def tearDown(self):
        self.p.close()

    def test_predictions_equal_ember_predict_on_the_same_rows(self):
        with open(ENV["EMBER_TEST_EXPECTED"]) as f:
            expected = [float(x) for x in f]
        data = rows()
        got = []
        for i in range(0, len(data), 256):
            got += self.p.predict(data[i:i + 256])
        self.assertEqual(len(got), len(expected))
        worst = max(abs(a - b) for a, b in zip(got, expected))
        self.assertLess(worst, 1e-6, "the same rows through the same node")
        self.assertGreater(len(set(round(x, 4) for x in got)), 10, "the model predicts, not a constant")

    def test_rows_by_field_name_equal_rows_by_position(self):
        fields = self.p.status()["fields"]
        self.assertEqual(len(fields), 39, fields)
        data = rows()[:50]
        by_name = [{name: value for name, value in zip(fields, row) if value != ""} for row in data]
        self.assertEqual(self.p.predict(by_name), self.p.predict(data))

    def test_a_reader_token_may_predict(self):
        with Predictor(ENV["EMBER_TEST_SERVING"], token=self.tokens["reader"], ca=ENV["EMBER_TEST_CA"]) as reader:
            self.assertEqual(len(reader.predict(rows()[:3])), 3)

    def test_no_token_is_unauthenticated_and_a_worker_token_is_denied(self):
        with Predictor(ENV["EMBER_TEST_SERVING"], ca=ENV["EMBER_TEST_CA"]) as anonymous:
            with self.assertRaises(EmberError) as e:
                anonymous.predict(rows()[:1])
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED, e.exception)
        with Predictor(ENV["EMBER_TEST_SERVING"], token=self.tokens["worker"], ca=ENV["EMBER_TEST_CA"]) as worker:
            with self.assertRaises(EmberError) as e:
                worker.predict(rows()[:1])
            self.assertEqual(e.exception.code, grpc.StatusCode.PERMISSION_DENIED, e.exception)

    def test_plaintext_against_a_tls_port_is_unavailable(self):
        with Predictor(ENV["EMBER_TEST_SERVING"], token=self.tokens["serving"], timeout=3) as plain:
            with self.assertRaises(EmberError) as e:
                plain.predict(rows()[:1])
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE, e.exception)

    def test_an_unknown_field_is_invalid_argument_naming_it(self):
        with self.assertRaises(EmberError) as e:
            self.p.predict([{"no_such_field": "1"}])
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("no_such_field", e.exception.message)

    def test_an_unknown_version_is_not_found(self):
        with self.assertRaises(EmberError) as e:
            self.p.predict(rows()[:1], version=999999)
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("999999", e.exception.message)

    def test_bad_rows_are_refused_before_any_call(self):
        for bad, words in [("I1=3", "list of rows"), ([], "no rows"), ([42], "row 0 is a int"),
                           ([{"I1": [1]}], "row 0 field I1 is a list"), ([{3: "x"}], "field name 3")]:
            with self.assertRaises(EmberError) as e:
                self.p.predict(bad)
            self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT, bad)
            self.assertIn(words, e.exception.message)
        with self.assertRaises(EmberError) as e:
            self.p.predict(rows()[:1], version=-1)
        self.assertIn("version", e.exception.message)


class PsClientTest(unittest.TestCase):
    def setUp(self):
        self.tokens = tokens()
        with open(ENV["EMBER_TEST_LOOKUPS"]) as f:
            self.expected = json.load(f)
        self.ps = PsClient(ENV["EMBER_TEST_PS"], token=self.tokens["reader"], ca=ENV["EMBER_TEST_CA"])

    def tearDown(self):
        self.ps.close()

    def test_lookups_route_keys_as_the_servers_do(self):
        keys = self.expected["keys"]
        self.assertEqual(self.ps.lookup(self.expected["table"], keys), self.expected["rows"])
        # Both servers were asked: the routing is what made the answers right.
        owners = {self.ps.owners[slot_of(k, len(self.ps.owners))] for k in keys}
        self.assertEqual(owners, {0, 1})

    def test_int64_ids_are_read_as_the_servers_store_them(self):
        keys = self.expected["keys"]
        top = keys.index(2**64 - 1)
        self.assertEqual(self.ps.lookup(self.expected["table"], [-1]), [self.expected["rows"][top]])

    def test_an_unknown_table_is_not_found(self):
        with self.assertRaises(EmberError) as e:
            self.ps.lookup("no_such_table", [1, 2])
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no_such_table", e.exception.message)

    def test_bad_keys_are_refused_before_any_call(self):
        for bad, words in [([1.5], "key 0"), ([1, "2"], "key 1"), ([2**64], "key 0"), ("123", "list of feature ids")]:
            with self.assertRaises(EmberError) as e:
                self.ps.lookup(self.expected["table"], bad)
            self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT, bad)
            self.assertIn(words, e.exception.message)

    def test_no_token_is_unauthenticated(self):
        with PsClient(ENV["EMBER_TEST_PS"], ca=ENV["EMBER_TEST_CA"]) as anonymous:
            with self.assertRaises(EmberError) as e:
                anonymous.lookup(self.expected["table"], [1])
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)


if __name__ == "__main__":
    unittest.main()
