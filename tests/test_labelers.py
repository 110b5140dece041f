"""Gold rewards and the mock labeller."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.labelling.labelers import (LabelRequest, MockLabeler, TokenFractionGold, VaderGold,
                                         token_fraction)

PAD = 1_000_000  # above every id the tests use


def _request(responses, query=(1, 2), response_length=None):
    """A request with one shared query and the given unpadded responses per record."""
    n, k = len(responses), len(responses[0])
    r = response_length or max(len(x) for row in responses for x in row)
    ids = np.full((n, k, r), PAD, np.int32)
    mask = np.zeros((n, k, r), np.int32)
    for i, row in enumerate(responses):
        for j, x in enumerate(row):
            ids[i, j, :len(x)] = x
            mask[i, j, :len(x)] = 1
    q = np.tile(np.asarray(query, np.int32), (n, 1))
    return LabelRequest(q, np.ones_like(q), ids, mask, PAD)


# --------------------------------------------------------------------------
# Gold rewards.


def test_vader_gold_orders_sentiment():
    gold = VaderGold()
    r = gold(["What a wonderful, happy day. I love it.", "The box was red.",
              "A terrible, sad day. I hate it."])
    assert r.dtype == np.float32 and r.shape == (3,)
    assert r[0] > 0.5 and r[1] == 0.0 and r[2] < -0.5
    assert gold([]).shape == (0,)
    with pytest.raises(ValueError, match="one string"):
        gold("wonderful")


def test_vader_gold_rewards_use_request_text():
    words = {1: "It", 2: " was", 3: " wonderful", 4: " awful", 5: " red", 6: "."}
    decode = lambda ids: "".join(words[t] for t in ids)  # noqa: E731
    q = np.array([[PAD, 1, 2]])
    r = np.array([[[3, 6], [4, 6], [5, 6]]])
    request = LabelRequest.from_tokens(q, (q != PAD).astype(int), r, np.ones_like(r),
                                       pad_token=PAD, decode=decode)
    assert request.query_text_N == ("It was",)
    assert request.response_text_NxK == ((" wonderful.", " awful.", " red."),)
    gold = VaderGold()
    np.testing.assert_array_equal(gold.rewards(request),
                                  gold([" wonderful.", " awful.", " red."])[None])
    with_query = VaderGold(include_query=True).rewards(request)
    np.testing.assert_array_equal(with_query, gold(["It was wonderful.", "It was awful.",
                                                    "It was red."])[None])
    labels = MockLabeler(gold, "best_of_3").label(request)
    assert labels.best_N.tolist() == [0]
    no_text = LabelRequest(q, (q != PAD).astype(int), r, np.ones_like(r), PAD)
    with pytest.raises(ValueError, match="carries no text"):
        gold.rewards(no_text)


def test_token_fraction_hand_worked():
    gold = TokenFractionGold([5, 6, 5])
    tokens = [[5, 1, 6, 0], [1, 2, 3, 4], [5, 5, 9, 9]]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    # 2 of 3 real tokens; none; an empty row scores 0.
    np.testing.assert_allclose(gold(tokens, mask), [2 / 3, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(gold(tokens), [0.5, 0.0, 0.5])
    jitted = jax.jit(token_fraction)(jnp.asarray(tokens), jnp.asarray(mask), jnp.array([5, 6]))
    np.testing.assert_allclose(jitted, [2 / 3, 0.0, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="target_ids is empty"):
        TokenFractionGold([])


# --------------------------------------------------------------------------
# MockLabeler.


def test_mock_labeler_picks_argmax():
    gold = TokenFractionGold([7])
    request = _request([
        [[1, 1], [7, 1], [7, 7], [1, 2]],     # gold 0, .5, 1, 0 -> 2
        [[7, 3, 3, 3], [3], [3, 3], [7, 7]],  # .25, 0, 0, 1 -> 3
        [[7], [1, 7], [1, 1, 7], [2]],        # 1, .5, 1/3, 0 -> 0
    ])
    labels = MockLabeler(gold, "best_of_4", seed=3, name="gold-bot").label(request)
    assert labels.label_type == "best_of_n"
    assert labels.best_N.tolist() == [2, 3, 0]
    np.testing.assert_allclose(labels.gold_NxK, [[0, .5, 1, 0], [.25, 0, 0, 1], [1, .5, 1 / 3, 0]],
                               rtol=1e-6)
    assert labels.labeler_N.tolist() == ["gold-bot"] * 3
    np.testing.assert_array_equal(labels.responses_NxKxR, request.responses_NxKxR)
    with pytest.raises(ValueError, match="K=4 responses per query, best_of_n needs K=3"):
        MockLabeler(gold, "best_of_3").label(request)


def _distinct_records(n, gold_pattern):
    """n records whose responses' gold under TokenFractionGold([7]) follows
    `gold_pattern` (fractions out of 4), each record with distinct tokens."""
    rows = []
    for i in range(n):
        filler = 10 + i
        rows.append([[7] * g + [filler] * (4 - g) for g in gold_pattern])
    return _request(rows)


def test_mock_labeler_breaks_ties_deterministically():
    request = _distinct_records(40, [1, 1, 1, 1])  # all tied
    labeler = MockLabeler(TokenFractionGold([7]), seed=0)
    best = labeler.label(request).best_N
    np.testing.assert_array_equal(best, MockLabeler(TokenFractionGold([7]), seed=0)
                                  .label(request).best_N)
    assert set(best.tolist()) == {0, 1, 2, 3}  # random among the tied
    # Only the tied maxima are candidates.
    partial = MockLabeler(TokenFractionGold([7]), seed=0).label(_distinct_records(40, [2, 0, 2, 1]))
    assert set(partial.best_N.tolist()) == {0, 2}


def test_mock_labeler_noise_is_seeded_and_boltzmann():
    # K=2, gold gap 0.25 with noise 0.25: P(best=1) = sigmoid(1) = 0.731.
    request = _distinct_records(2000, [0, 1])
    noisy = MockLabeler(TokenFractionGold([7]), "pairwise", noise=0.25, seed=1)
    best = noisy.label(request).best_N
    assert abs(best.mean() - 1 / (1 + np.exp(-1.0))) < 0.03  # 3 sigma is 0.030
    again = MockLabeler(TokenFractionGold([7]), "pairwise", noise=0.25, seed=1).label(request)
    np.testing.assert_array_equal(best, again.best_N)
    other_seed = MockLabeler(TokenFractionGold([7]), "pairwise", noise=0.25, seed=2).label(request)
    assert (other_seed.best_N != best).any()
    # Labels do not depend on batching: record 5 alone gets the same answer.
    alone = noisy.label(_request(np.asarray(_distinct_records(6, [0, 1]).responses_NxKxR)[5:6]
                                 .tolist()))
    assert alone.best_N[0] == best[5]
    # A large gap relative to the noise is labelled reliably.
    sharp = MockLabeler(TokenFractionGold([7]), "best_of_4", noise=0.01, seed=1)
    assert (sharp.label(_distinct_records(50, [0, 4, 1, 2])).best_N == 1).all()


def test_mock_labeler_pairwise_output():
    request = _request([[[7, 1], [1, 1]], [[1, 1], [7, 7]]])
    labels = MockLabeler(TokenFractionGold([7]), "pairwise").label(request)
    assert labels.label_type == "pairwise" and labels.num_responses == 2
    assert labels.best_N.tolist() == [0, 1] and labels.best_N.dtype == np.int32
    with pytest.raises(ValueError, match="K=3 responses per query, pairwise needs K=2"):
        MockLabeler(TokenFractionGold([7]), "pairwise").label(
            _request([[[7], [1], [1]]]))


def test_mock_labeler_scalar_types():
    request = _request([[[7, 1], [7, 7]], [[1, 1], [7, 1]]])
    compare = MockLabeler(TokenFractionGold([7]), "scalar_compare").label(request)
    np.testing.assert_allclose(compare.difference_N, [0.5, 0.5])
    assert compare.best_N is None
    noisy = MockLabeler(TokenFractionGold([7]), "scalar_compare", noise=0.1, seed=0).label(request)
    assert not np.allclose(noisy.difference_N, [0.5, 0.5])
    assert np.all(np.abs(noisy.difference_N - 0.5) < 0.5)
    rating = MockLabeler(TokenFractionGold([7]), "scalar_rating").label(
        _request([[[7, 1, 1, 1]], [[7, 7, 7, 1]]]))
    np.testing.assert_allclose(rating.score_N, [0.25, 0.75])
    with pytest.raises(ValueError, match="noise=-1.0 must be >= 0"):
        MockLabeler(TokenFractionGold([7]), noise=-1.0)
