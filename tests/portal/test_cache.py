"""What a worker remembers about keys for a few seconds must never outlive a change made on that worker."""

import asyncio

import pytest
from rest_framework import exceptions

from accounts import services
from portal import cache
from tokens.callers import known_caller


@pytest.mark.django_db
def test_an_answer_read_before_a_change_is_not_remembered():
    remembered = cache.RecentCache(60)
    read_at = cache.generation()  # a lease starts reading who the key belongs to…
    cache.forget_everything()  # …the key is revoked meanwhile…
    remembered.put("key", "the key, not yet revoked", read_at)  # …and the lease's read comes back
    assert remembered.get("key") is None


@pytest.mark.django_db
def test_an_answer_read_between_a_change_and_its_commit_is_forgotten_at_the_commit(django_capture_on_commit_callbacks):
    remembered = cache.RecentCache(60)
    with django_capture_on_commit_callbacks(execute=True):
        cache.forget_everything()  # the revoking transaction saved the key but has not committed
        remembered.put("key", "the key, as the uncommitted change left it unseen", cache.generation())
        assert remembered.get("key") is not None
    assert remembered.get("key") is None  # emptied again when the revocation committed


@pytest.mark.django_db(transaction=True)  # the database threads must see the key
def test_revoking_a_key_on_this_worker_refuses_it_at_once(organization, make_member):
    membership, raw_key = make_member(organization)
    assert asyncio.run(known_caller(raw_key)).membership.pk == membership.pk  # remembered now
    services.api_key_revoke(api_key=membership.api_keys.get(), actor=None)
    with pytest.raises(exceptions.AuthenticationFailed):
        asyncio.run(known_caller(raw_key))
