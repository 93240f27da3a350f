#!/bin/sh
# LocalStack runs this once S3 is ready: the bucket `make test-endpoint` uses by default.
set -eu
awslocal s3 mb s3://qlite-tests || awslocal s3api head-bucket --bucket qlite-tests
