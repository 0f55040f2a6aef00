"""The project's Redis cache backend: Django's, reusing its clients."""

from django.core.cache import caches

from billing_project.redis_cache import RedisCache


def test_the_cache_reuses_one_client_per_pool_and_works():
    cache = caches["default"]
    assert isinstance(cache, RedisCache)
    client = cache._cache.get_client()
    assert cache._cache.get_client(write=True) is client
    cache.set("redis-cache-test", {"a": 1}, 5)
    assert cache.get("redis-cache-test") == {"a": 1}
    cache.delete("redis-cache-test")
