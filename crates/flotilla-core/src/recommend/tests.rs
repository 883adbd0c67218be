#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use crate::model::default_models;
use crate::money::PricePerMillion;
use crate::usage::Prices;
use proptest::prelude::*;

fn request() -> RecommendRequest {
    RecommendRequest::default()
}

fn money(text: &str) -> Money {
    text.parse().unwrap()
}

#[test]
fn weights_are_normalised_and_cost_takes_what_remains() {
    let p = Profile::from_request(&request()).unwrap();
    assert!((p.w_quality - 0.5).abs() < 1e-12);
    assert!((p.w_speed - 0.3).abs() < 1e-12);
    assert!((p.w_cost - 0.2).abs() < 1e-12);

    let p = Profile::from_request(&RecommendRequest {
        quality_priority: Some(2.0),
        speed_priority: Some(1.0),
        cost_priority: Some(1.0),
        ..request()
    })
    .unwrap();
    assert!((p.w_quality - 0.5).abs() < 1e-12);
    assert!((p.w_speed - 0.25).abs() < 1e-12);
    assert!((p.w_cost - 0.25).abs() < 1e-12);

    // Quality and speed already over 1: no cost weight unless asked for.
    let p = Profile::from_request(&RecommendRequest {
        quality_priority: Some(0.9),
        ..request()
    })
    .unwrap();
    assert!((p.w_quality + p.w_speed - 1.0).abs() < 1e-12);
    assert!(p.w_cost.abs() < 1e-12);
}

#[test]
fn the_default_table_estimates_exact_costs() {
    let ranked = rank(&default_models(), &request()).unwrap();
    let cost = |name: &str| {
        ranked
            .iter()
            .find(|c| c.model == name)
            .unwrap()
            .estimated_cost
            .unwrap()
    };
    // 1000 × $0.1/M + 500 × $0.4/M.
    assert_eq!(cost("gemini-2.0-flash"), money("0.0003"));
    assert_eq!(cost("gpt-5"), money("0.00625"));
    assert_eq!(cost("claude-opus-4.1"), money("0.0525"));
}

#[test]
fn a_high_quality_priority_picks_a_high_quality_model() {
    let r = recommend(
        &default_models(),
        &RecommendRequest {
            task_type: Some("code_generator".to_owned()),
            complexity: Some(0.9),
            quality_priority: Some(1.0),
            speed_priority: Some(0.0),
            cost_priority: Some(0.0),
            ..request()
        },
    )
    .unwrap();
    // gpt-5 and claude-opus-4.1 both have quality 0.95; the tie goes to the cheaper one.
    assert_eq!(r.recommended_model, "gpt-5");
    assert_eq!(r.alternatives[0].model, "claude-opus-4.1");
    assert!(
        r.reasoning
            .starts_with("gpt-5: best score 0.95 for a code_generator task")
    );
    assert_eq!(r.alternatives.len(), 4);
}

#[test]
fn a_high_cost_priority_picks_the_cheapest_model() {
    let r = recommend(
        &default_models(),
        &RecommendRequest {
            cost_priority: Some(5.0),
            ..request()
        },
    )
    .unwrap();
    assert_eq!(r.recommended_model, "gemini-2.0-flash");
    assert!(
        r.reasoning.contains("est. $0.0003 per call"),
        "{}",
        r.reasoning
    );
}

#[test]
fn a_low_quality_model_is_penalised_for_a_complex_task() {
    let easy = rank(
        &default_models(),
        &RecommendRequest {
            complexity: Some(0.2),
            ..request()
        },
    )
    .unwrap();
    let hard = rank(
        &default_models(),
        &RecommendRequest {
            complexity: Some(1.0),
            ..request()
        },
    )
    .unwrap();
    let score = |r: &[Candidate], m: &str| r.iter().find(|c| c.model == m).unwrap().score;
    // Quality 0.70 against complexity 1.0: fit 0.4, 0.3 × the quality weight 0.5 lost.
    let lost = score(&easy, "gemini-2.0-flash") - score(&hard, "gemini-2.0-flash");
    assert!((lost - 0.15).abs() < 1e-9, "{lost}");
    assert!((score(&easy, "gpt-5") - score(&hard, "gpt-5")).abs() < 0.05 * 0.5 + 1e-9);
    assert_eq!(hard[0].model, "gpt-5");
}

#[test]
fn a_budget_limit_excludes_dearer_models_and_lists_them_last() {
    let r = recommend(
        &default_models(),
        &RecommendRequest {
            quality_priority: Some(1.0),
            speed_priority: Some(0.0),
            budget_limit: Some(money("0.007")),
            ..request()
        },
    )
    .unwrap();
    assert_eq!(r.recommended_model, "gpt-5");
    let excluded: Vec<&str> = r
        .alternatives
        .iter()
        .filter(|c| c.excluded.is_some())
        .map(|c| c.model.as_str())
        .collect();
    // Excluded ones come after gemini, whose score is lower than theirs; gpt-4o and
    // claude-sonnet-3.5 tie at 0.85 and the cheaper goes first.
    assert_eq!(excluded, ["claude-opus-4.1", "gpt-4o", "claude-sonnet-3.5"]);
    assert_eq!(r.alternatives[0].model, "gemini-2.0-flash");
    assert!(
        r.reasoning
            .ends_with("; 3 models over the $0.007 budget limit were excluded."),
        "{}",
        r.reasoning
    );

    let err = recommend(
        &default_models(),
        &RecommendRequest {
            budget_limit: Some(money("0.0001")),
            ..request()
        },
    )
    .unwrap_err();
    let RecommendError::NoneFits { reason } = err else {
        panic!("{err:?}")
    };
    assert!(reason.contains("gemini-2.0-flash"), "{reason}");
}

#[test]
fn an_unknown_price_scores_zero_on_cost_and_cannot_meet_a_budget() {
    let mut models = default_models();
    models[4].prices = Prices::default();
    let ranked = rank(&models, &request()).unwrap();
    let flash = ranked
        .iter()
        .find(|c| c.model == "gemini-2.0-flash")
        .unwrap();
    assert_eq!(flash.estimated_cost, None);
    assert!(flash.note.is_some() && flash.excluded.is_none());
    assert!((flash.score - (0.5 * 0.7 + 0.3 * 0.95)).abs() < 1e-9);

    let r = recommend(
        &models,
        &RecommendRequest {
            budget_limit: Some(money("1")),
            ..request()
        },
    )
    .unwrap();
    let flash = r.alternatives.last().unwrap();
    assert_eq!(flash.model, "gemini-2.0-flash");
    assert!(flash.excluded.as_deref().unwrap().contains("price unknown"));
    assert!(
        r.reasoning
            .ends_with("; 1 model of unknown price was excluded.")
    );
}

#[test]
fn out_of_range_fields_are_refused_by_name() {
    let field = |r: RecommendRequest| match recommend(&default_models(), &r) {
        Err(RecommendError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(RecommendRequest {
            complexity: Some(1.5),
            ..request()
        }),
        "complexity"
    );
    assert_eq!(
        field(RecommendRequest {
            complexity: Some(f64::NAN),
            ..request()
        }),
        "complexity"
    );
    assert_eq!(
        field(RecommendRequest {
            speed_priority: Some(-0.1),
            ..request()
        }),
        "speed_priority"
    );
    assert_eq!(
        field(RecommendRequest {
            cost_priority: Some(f64::INFINITY),
            ..request()
        }),
        "cost_priority"
    );
    assert_eq!(
        field(RecommendRequest {
            quality_priority: Some(0.0),
            speed_priority: Some(0.0),
            cost_priority: Some(0.0),
            ..request()
        }),
        "quality_priority"
    );
    assert!(matches!(
        recommend(&[], &request()),
        Err(RecommendError::NoneFits { .. })
    ));
}

#[test]
fn requests_parse_strictly_with_type_and_a_decimal_budget() {
    let r: RecommendRequest = serde_json::from_str(
        r#"{"type": "code_generator", "complexity": 0.8, "budget_limit": "0.01"}"#,
    )
    .unwrap();
    assert_eq!(r.task_type.as_deref(), Some("code_generator"));
    assert_eq!(r.budget_limit, Some(money("0.01")));
    assert!(serde_json::from_str::<RecommendRequest>(r#"{"budget": 1}"#).is_err());
}

#[test]
fn the_answer_is_deterministic_whatever_the_table_order() {
    let a = recommend(&default_models(), &request()).unwrap();
    let mut reversed = default_models();
    reversed.reverse();
    let b = recommend(&reversed, &request()).unwrap();
    assert_eq!(a, b);
    // Two identical models but for the name: the name decides.
    let mut twins = default_models();
    twins.truncate(1);
    let mut twin = twins[0].clone();
    twin.name = "a-twin".to_owned();
    twins.push(twin);
    assert_eq!(
        recommend(&twins, &request()).unwrap().recommended_model,
        "a-twin"
    );
}

fn arb_model() -> impl Strategy<Value = ModelSpec> {
    (
        "[a-z]{1,6}",
        0.0..=1.0_f64,
        0.0..=1.0_f64,
        proptest::option::weighted(0.9, 0_i64..100_000_000),
        proptest::option::weighted(0.9, 0_i64..100_000_000),
    )
        .prop_map(|(name, quality, speed, input, output)| {
            let mut m = default_models().remove(0);
            m.name = name;
            m.quality = quality;
            m.speed = speed;
            m.prices = Prices {
                input: input.map(PricePerMillion::from_micro),
                output: output.map(PricePerMillion::from_micro),
                ..Prices::default()
            };
            m
        })
}

proptest! {
    #[test]
    fn the_recommended_model_scores_at_least_every_model_that_fits(
        models in proptest::collection::vec(arb_model(), 1..8),
        complexity in 0.0..=1.0_f64,
        q in 0.0..3.0_f64, s in 0.0..3.0_f64, c in 0.01..3.0_f64,
        limit in proptest::option::of(0_i64..200_000_000_000),
        input in 0_u64..100_000, output in 0_u64..10_000,
    ) {
        let req = RecommendRequest {
            complexity: Some(complexity),
            quality_priority: Some(q),
            speed_priority: Some(s),
            cost_priority: Some(c),
            budget_limit: limit.map(Money::from_pico),
            input_tokens: Some(input),
            output_tokens: Some(output),
            ..request()
        };
        let ranked = rank(&models, &req).unwrap();
        prop_assert_eq!(ranked.len(), models.len());
        for cand in &ranked {
            prop_assert!((0.0..=1.0 + 1e-9).contains(&cand.score), "{}", cand.score);
        }
        match recommend(&models, &req) {
            Ok(r) => {
                let best = &ranked[0];
                prop_assert_eq!(&best.model, &r.recommended_model);
                prop_assert!(best.excluded.is_none());
                prop_assert_eq!(r.alternatives.len(), models.len() - 1);
                for alt in r.alternatives.iter().filter(|a| a.excluded.is_none()) {
                    prop_assert!(best.score >= alt.score);
                }
            }
            Err(RecommendError::NoneFits { .. }) => {
                prop_assert!(ranked.iter().all(|c| c.excluded.is_some()));
            }
            Err(e) => prop_assert!(false, "{e:?}"),
        }
    }
}
